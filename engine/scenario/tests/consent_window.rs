//! `enrolment.consent_window`: how long before an enrolment a consent to the pathway
//! still counts for the new instance (30 days unless the file says; `0d`: none counts).

use parcours_core::events::EventType;
use parcours_scenario::{Simulator, parse_time};

fn pathway(window: Option<&str>) -> String {
    let window = window.map_or(String::new(), |w| format!("  consent_window: {w}\n"));
    format!(
        r#"
pathway: consent-demo
version: 1
title: A consent before the enrolment
enrolment:
  on: encounter.discharged
{window}tracks:
  main:
    initial: waiting
    states:
      waiting:
        transitions:
          - on: consent.given
            goto: started
          - after: 14d
            goto: done
      started:
        transitions:
          - after: 90d
            goto: done
      done:
        terminal: true
"#
    )
}

/// The main track's state right after a discharge `days` after a consent, under `window`.
fn after_discharge(window: Option<&str>, days: &str) -> String {
    let (p, report) = parcours_lang::compile_source("consent.yaml", &pathway(window))
        .unwrap_or_else(|r| panic!("{}", r.render()));
    assert!(report.diagnostics.is_empty(), "{}", report.render());
    let start = parse_time("2026-03-02T10:00", None).expect("start");
    let mut sim = Simulator::new(&p, "t", "p", start);
    let consent = sim.event("c", start, EventType::ConsentGiven, serde_json::json!({}));
    sim.deliver(&consent.expect("payload")).expect("consent");
    let at = parse_time(days, Some(start)).expect("time");
    let discharge = sim.event(
        "d",
        at,
        EventType::EncounterDischarged,
        serde_json::json!({"encounter_id": "V1"}),
    );
    sim.deliver(&discharge.expect("payload"))
        .expect("discharge");
    let state = sim.current().expect("enrolled");
    p.state(state.tracks[0].state).name.to_string()
}

#[test]
fn a_consent_counts_within_the_pathways_window() {
    assert_eq!(
        after_discharge(None, "+30d"),
        "started",
        "30 days by default"
    );
    assert_eq!(after_discharge(None, "+31d"), "waiting");
    assert_eq!(after_discharge(Some("2d"), "+2d"), "started");
    assert_eq!(after_discharge(Some("2d"), "+3d"), "waiting");
    assert_eq!(
        after_discharge(Some("0d"), "+1h"),
        "waiting",
        "0d: none counts"
    );
}

#[test]
fn a_window_that_is_not_a_duration_is_an_error_at_its_place() {
    let text = pathway(Some("a month"));
    let report = parcours_lang::compile_source("consent.yaml", &text).expect_err("refused");
    let rendered = report.render();
    assert!(
        rendered.contains("invalid duration `a month`") && rendered.contains("consent.yaml:7:19"),
        "{rendered}"
    );
}

/// The patient's last word is the latest by clinical time, not by arrival: a consent
/// entered late, dated before a withdrawal already recorded, does not count — and one
/// dated after it does.
#[test]
fn the_last_word_is_the_latest_by_clinical_time() {
    let (p, _) = parcours_lang::compile_source("consent.yaml", &pathway(None))
        .unwrap_or_else(|r| panic!("{}", r.render()));
    let start = parse_time("2026-03-02T10:00", None).expect("start");
    for (consent_at, expected) in [("+0d", "waiting"), ("+2h", "started")] {
        let mut sim = Simulator::new(&p, "t", "p", start);
        let at = |rel: &str| parse_time(rel, Some(start)).expect("time");
        let withdrawn = sim.event(
            "w",
            at("+1h"),
            EventType::ConsentWithdrawn,
            serde_json::json!({}),
        );
        sim.deliver(&withdrawn.expect("payload"))
            .expect("withdrawal");
        let given = sim.event(
            "c",
            at(consent_at),
            EventType::ConsentGiven,
            serde_json::json!({}),
        );
        sim.deliver(&given.expect("payload")).expect("consent");
        let discharge = sim.event(
            "d",
            at("+1d"),
            EventType::EncounterDischarged,
            serde_json::json!({"encounter_id": "V1"}),
        );
        sim.deliver(&discharge.expect("payload"))
            .expect("discharge");
        let state = sim.current().expect("enrolled");
        assert_eq!(
            &*p.state(state.tracks[0].state).name,
            expected,
            "a consent at {consent_at}, entered after a withdrawal at +1h"
        );
    }
}

/// `consent_across_join`: what a link or merge hands to an instance from the other side's
/// consents — the other side's last word, when later than the instance's side's and
/// counted as if sent under its key; the copy names the joined patient, at the join's
/// time when the word is older.
#[test]
fn a_join_hands_over_the_other_sides_last_word_where_it_counts() {
    use parcours_core::route::consent_across_join;
    let (p, _) = parcours_lang::compile_source("consent.yaml", &pathway(Some("2d")))
        .unwrap_or_else(|r| panic!("{}", r.render()));
    let start = parse_time("2026-03-02T10:00", None).expect("start");
    let at = |rel: &str| parse_time(rel, Some(start)).expect("time");
    let mut sim = Simulator::new(&p, "t", "ins", start);
    let ev = |sim: &Simulator, id: &str, rel: &str, ty: EventType, data: serde_json::Value| {
        sim.event(id, at(rel), ty, data).expect("payload")
    };
    let discharge = ev(
        &sim,
        "d",
        "+10d",
        EventType::EncounterDischarged,
        serde_json::json!({"encounter_id": "V1"}),
    );
    sim.deliver(&discharge).expect("discharge");
    let instance = sim.current().expect("enrolled").clone();
    let join = ev(
        &sim,
        "l",
        "+12d",
        EventType::IdentityLinked,
        serde_json::json!({"local_subject": "ipp"}),
    );
    let consent = |id: &str, rel: &str, ty| ev(&sim, id, rel, ty, serde_json::json!({}));
    let given = |id: &str, rel: &str| consent(id, rel, EventType::ConsentGiven);
    let withdrawn = |id: &str, rel: &str| consent(id, rel, EventType::ConsentWithdrawn);
    let handed = |own: &[parcours_core::Event], other: &[parcours_core::Event]| {
        consent_across_join(&p, &instance, &[&instance], own, other, &join)
            .map(|c| (c.id, c.occurred_at))
    };
    // Within the window before the enrolment (2 days), or after it: handed over; the copy
    // at the join's time when older, at its own when later.
    assert_eq!(
        handed(&[], &[given("c", "+8d")]),
        Some(("c".into(), at("+12d")))
    );
    assert_eq!(
        handed(&[], &[given("c", "+11d")]),
        Some(("c".into(), at("+12d")))
    );
    assert_eq!(
        handed(&[], &[given("c", "+13d")]),
        Some(("c".into(), at("+13d")))
    );
    // Older than the window: not.
    assert_eq!(handed(&[], &[given("c", "+7d")]), None);
    // A withdrawal after the enrolment: handed over; before it: not.
    assert_eq!(
        handed(&[], &[withdrawn("w", "+11d")]).map(|c| c.0),
        Some("w".into())
    );
    assert_eq!(handed(&[], &[withdrawn("w", "+9d")]), None);
    // The instance's side spoke later, or at the same instant: its word stands.
    assert_eq!(
        handed(&[withdrawn("w", "+11d")], &[given("c", "+10d")]),
        None
    );
    assert_eq!(
        handed(&[withdrawn("w", "+11d")], &[given("c", "+11d")]),
        None
    );
    assert_eq!(
        handed(&[withdrawn("w", "+11d")], &[given("c", "+11d1h")]).map(|c| c.0),
        Some("c".into())
    );
    // Of the other side's words, the last: a consent then a withdrawal hands the withdrawal.
    assert_eq!(
        handed(&[], &[given("c", "+11d"), withdrawn("w", "+11d2h")]).map(|c| c.0),
        Some("w".into())
    );
    // The copy is the joined patient's.
    let copy =
        consent_across_join(&p, &instance, &[], &[], &[given("c", "+11d")], &join).expect("handed");
    assert_eq!(copy.subject, join.subject);
    // A consent before the enrolment that another instance of the pathway, enrolled
    // since, used (one consent counts for one enrolment): not handed; one after the
    // enrolment is this instance's whatever the others.
    let mut earlier = instance.clone();
    earlier.instance_id = "an-earlier-stay".into();
    earlier.enrolled_at = at("+9d").into();
    let both = [&instance, &earlier];
    let across = |word: parcours_core::Event| {
        consent_across_join(&p, &instance, &both, &[], &[word], &join).map(|c| c.id)
    };
    assert_eq!(across(given("c", "+8d")), None);
    assert_eq!(across(given("c", "+9d1h")), Some("c".into()));
    assert_eq!(across(given("c", "+11d")), Some("c".into()));
}
