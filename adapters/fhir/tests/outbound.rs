//! Outbound resources, snapshot-tested: every task, alert and handoff effect.

use std::sync::Arc;

use parcours_core::Change;
use parcours_core::model::{Priority, Severity, TaskOutcome};
use parcours_core::state::{Recorded, TimerKind};
use parcours_fhir::outbound::{self, EffectView};
use uuid::Uuid;

const TENANT: &str = "cpts-test";
const SUBJECT: &str = "p-0123456789abcdef0123456789abcdef";
const INSTANCE: &str = "hf-0191f3a2-inst";
const TASK: Uuid = Uuid::from_u128(0x0191_f3a2_7c4e_7d11_9a55_3f8e_2c1b_0a99);
const ALERT: Uuid = Uuid::from_u128(0x0191_f3a2_7c4e_7d11_9a55_3f8e_2c1b_0b01);
const HANDOFF: Uuid = Uuid::from_u128(0x0191_f3a2_7c4e_7d11_9a55_3f8e_2c1b_0c02);

fn ts(s: &str) -> jiff::Timestamp {
    s.parse().expect("timestamp")
}

fn recorded(n: u128, rule: Option<&str>, change: Change) -> Recorded {
    Recorded {
        id: Uuid::from_u128(0xe000 + n),
        cause: Arc::from("evt-discharge-1"),
        rule: rule.map(Arc::from),
        at: ts("2026-03-02T09:00:00Z"),
        change,
    }
}

fn effects() -> Vec<(&'static str, Recorded)> {
    let a = |s: &str| Arc::<str>::from(s);
    vec![
        (
            "task.requested",
            recorded(
                1,
                Some("enrol"),
                Change::TaskRequested {
                    task_id: TASK,
                    code: a("gp-visit-7d"),
                    role: a("gp"),
                    title: a("GP visit within 7 days of discharge"),
                    due_at: ts("2026-03-09T09:00:00Z"),
                    priority: Priority::Urgent,
                },
            ),
        ),
        (
            "task.reminded",
            recorded(
                2,
                None,
                Change::TaskReminded {
                    task_id: TASK,
                    code: a("gp-visit-7d"),
                    role: a("gp"),
                },
            ),
        ),
        (
            "task.overdue",
            recorded(
                3,
                None,
                Change::TaskOverdue {
                    task_id: TASK,
                    code: a("gp-visit-7d"),
                    role: a("gp"),
                },
            ),
        ),
        (
            "task.escalated",
            recorded(
                4,
                None,
                Change::TaskEscalated {
                    task_id: TASK,
                    code: a("gp-visit-7d"),
                    step: 0,
                    role: a("coordinator"),
                    priority: Priority::Asap,
                },
            ),
        ),
        (
            "task.closed.completed",
            recorded(
                5,
                None,
                Change::TaskClosed {
                    task_id: TASK,
                    code: a("gp-visit-7d"),
                    outcome: TaskOutcome::Completed,
                    done: true,
                },
            ),
        ),
        (
            "task.closed.not_needed",
            recorded(
                6,
                Some("readmission"),
                Change::TaskClosed {
                    task_id: TASK,
                    code: a("gp-visit-7d"),
                    outcome: TaskOutcome::NotNeeded,
                    done: false,
                },
            ),
        ),
        (
            "task.closed.could_not_be_done",
            recorded(
                7,
                None,
                Change::TaskClosed {
                    task_id: TASK,
                    code: a("gp-visit-7d"),
                    outcome: TaskOutcome::CouldNotBeDone,
                    done: false,
                },
            ),
        ),
        (
            "alert.raised",
            recorded(
                8,
                Some("weight-gain"),
                Change::AlertRaised {
                    alert_id: ALERT,
                    code: "weight-gain".into(),
                    severity: Severity::High,
                    role: "nurse".into(),
                    message: "Weight up 2.4 kg in 3 days: call the patient today".into(),
                },
            ),
        ),
        (
            "alert.escalated",
            recorded(
                9,
                None,
                Change::AlertEscalated {
                    alert_id: ALERT,
                    code: "weight-gain".into(),
                    role: "gp".into(),
                },
            ),
        ),
        (
            "alert.closed",
            recorded(
                10,
                None,
                Change::AlertClosed {
                    alert_id: ALERT,
                    code: "weight-gain".into(),
                },
            ),
        ),
        (
            "handoff.requested",
            recorded(
                11,
                Some("enrol"),
                Change::HandoffRequested {
                    handoff_id: HANDOFF,
                    code: "hospital-to-gp".into(),
                    from: "hospital".into(),
                    to: "gp".into(),
                    title: "Take over heart-failure follow-up".into(),
                    accept_by: ts("2026-03-04T09:00:00Z"),
                },
            ),
        ),
        (
            "handoff.escalated",
            recorded(
                12,
                None,
                Change::HandoffEscalated {
                    handoff_id: HANDOFF,
                    code: "hospital-to-gp".into(),
                    role: "coordinator".into(),
                },
            ),
        ),
        (
            "handoff.closed.accepted",
            recorded(
                13,
                None,
                Change::HandoffClosed {
                    handoff_id: HANDOFF,
                    code: "hospital-to-gp".into(),
                    accepted: true,
                },
            ),
        ),
        (
            "handoff.closed.not_accepted",
            recorded(
                14,
                None,
                Change::HandoffClosed {
                    handoff_id: HANDOFF,
                    code: "hospital-to-gp".into(),
                    accepted: false,
                },
            ),
        ),
    ]
}

/// Pretty JSON with keys sorted, whatever serde_json's `preserve_order` feature says.
fn sorted_pretty(v: &serde_json::Value) -> String {
    fn sort(v: &serde_json::Value) -> serde_json::Value {
        match v {
            serde_json::Value::Object(m) => {
                let mut keys: Vec<&String> = m.keys().collect();
                keys.sort();
                serde_json::Value::Object(
                    keys.into_iter().map(|k| (k.clone(), sort(&m[k]))).collect(),
                )
            }
            serde_json::Value::Array(a) => serde_json::Value::Array(a.iter().map(sort).collect()),
            other => other.clone(),
        }
    }
    serde_json::to_string_pretty(&sort(v)).expect("json")
}

fn view(r: &Recorded, position: u64) -> EffectView<'_> {
    EffectView::new(r, TENANT, SUBJECT, INSTANCE, position)
}

#[test]
fn every_effect_becomes_a_resource() {
    for (i, (name, r)) in effects().iter().enumerate() {
        let resource = outbound::resource(&view(r, 100 + i as u64)).expect("a resource");
        let json = sorted_pretty(&resource);
        insta::assert_snapshot!(name.to_string(), json);
    }
}

#[test]
fn families_go_to_their_resource_type() {
    for (name, r) in effects() {
        let v = view(&r, 1);
        let is_alert = name.starts_with("alert");
        assert_eq!(outbound::task_resource(&v).is_some(), !is_alert, "{name}");
        assert_eq!(
            outbound::communication_resource(&v).is_some(),
            is_alert,
            "{name}"
        );
        let resource = outbound::resource(&v).expect("resource");
        let expected = if is_alert { "Communication" } else { "Task" };
        assert_eq!(resource["resourceType"], expected);
        // The patient is named by the subject key only.
        let who = if is_alert {
            &resource["subject"]
        } else {
            &resource["for"]
        };
        assert_eq!(who["identifier"]["system"], "urn:parcours:subject");
        assert_eq!(who["identifier"]["value"], SUBJECT);
        // The effect id is carried, so a redelivery is recognised.
        let ids = resource["identifier"].as_array().expect("identifiers");
        assert!(
            ids.iter()
                .any(|i| i["system"] == "urn:parcours:effect" && i["value"] == r.id.to_string())
        );
        // Same effect, same JSON.
        assert_eq!(Some(resource), outbound::resource(&view(&r, 1)));
    }
}

/// An open item read after its escalation: the request's resource names the escalated
/// role — a Task as its owner (its performer type unchanged), a Communication as one more
/// recipient (once, however many times it is shown).
#[test]
fn an_escalation_is_shown_on_the_request() {
    let all = effects();
    let request = |name: &str| {
        let (_, r) = all.iter().find(|(n, _)| *n == name).expect("the request");
        outbound::resource(&view(r, 1)).expect("a resource")
    };
    let role = |r: &serde_json::Value| r["identifier"]["value"].clone();
    let mut task = request("task.requested");
    assert_eq!(role(&task["owner"]), "gp");
    outbound::show_escalation(&mut task, "coordinator");
    assert_eq!(role(&task["owner"]), "coordinator", "{task}");
    assert_eq!(task["owner"]["display"], "coordinator");
    assert_eq!(
        task["performerType"][0]["coding"][0]["code"], "gp",
        "{task}"
    );
    let mut alert = request("alert.raised");
    for _ in 0..2 {
        outbound::show_escalation(&mut alert, "gp");
    }
    let to: Vec<_> = alert["recipient"]
        .as_array()
        .expect("recipients")
        .iter()
        .map(role)
        .collect();
    assert_eq!(to, ["nurse", "gp"], "{alert}");
}

#[test]
fn other_changes_are_not_effects() {
    let others = [
        Change::StateEntered {
            track: Arc::from("main"),
            state: Arc::from("referred"),
            from: None,
        },
        Change::TimerScheduled {
            timer_id: TASK,
            fire_at: ts("2026-03-09T09:00:00Z"),
            kind: TimerKind::TaskDue { task_id: TASK },
        },
        Change::TimerCancelled { timer_id: TASK },
        Change::Completed,
        Change::Closed {
            reason: "deceased".into(),
        },
    ];
    for change in others {
        let r = recorded(0, None, change);
        assert_eq!(outbound::resource(&view(&r, 1)), None, "{:?}", r.change);
    }
}

#[test]
fn priorities_and_severities() {
    use parcours_fhir::outbound::{priority_code, severity_priority};
    assert_eq!(
        [
            Priority::Routine,
            Priority::Urgent,
            Priority::Asap,
            Priority::Stat
        ]
        .map(priority_code),
        ["routine", "urgent", "asap", "stat"]
    );
    assert_eq!(
        [
            Severity::Low,
            Severity::Medium,
            Severity::High,
            Severity::Critical
        ]
        .map(severity_priority),
        ["routine", "urgent", "asap", "stat"]
    );
}
