//! Outbound: task, alert and handoff effects as FHIR R4 Task and Communication.
//!
//! Each effect becomes a snapshot of one resource whose `id` is the task, alert or
//! handoff id, so the successive effects of one task (requested, reminded, overdue,
//! escalated, closed) are versions of one Task: `meta.versionId` is the effect's log
//! position, `meta.lastUpdated` its clinical time, and the effect id is an identifier
//! (`urn:parcours:effect`), so a redelivered effect is recognised. Only what the effect
//! carries is written: a reminder has no title or due time. Everything is derived from
//! the effect: the same effect always gives the same JSON.

use jiff::Timestamp;
use parcours_core::Change;
use parcours_core::model::{Priority, Severity, TaskOutcome};
use parcours_core::state::Recorded;
use serde_json::Value;
use uuid::Uuid;

use crate::r4::{
    CodeableConcept, Coding, Communication, Identifier, Meta, Payload, Period, Reference,
    Restriction, Task,
};
use crate::{
    ALERT_CODE_SYSTEM, ALERT_SYSTEM, BUSINESS_STATUS_SYSTEM, EFFECT_SYSTEM, EVENT_SYSTEM,
    HANDOFF_CODE_SYSTEM, HANDOFF_SYSTEM, INSTANCE_SYSTEM, ROLE_SYSTEM, RULE_SYSTEM, SUBJECT_SYSTEM,
    TASK_CODE_SYSTEM, TASK_STATUS_REASON_SYSTEM, TASK_SYSTEM, TENANT_SYSTEM,
};

/// The HL7 communication-category code system (`alert`).
const COMMUNICATION_CATEGORY: &str = "http://terminology.hl7.org/CodeSystem/communication-category";

/// One recorded effect and where it belongs: what the outbound mapping reads.
#[derive(Clone, Copy, Debug)]
pub struct EffectView<'a> {
    /// The effect id (the recorded event's id; `Nats-Msg-Id` on the bus).
    pub effect_id: Uuid,
    /// The tenant (CPTS).
    pub tenant: &'a str,
    /// The pseudonymous subject key of the patient.
    pub subject: &'a str,
    /// The pathway instance.
    pub instance_id: &'a str,
    /// The id of the event that caused the effect.
    pub cause: &'a str,
    /// The pathway rule that caused it, if any.
    pub rule: Option<&'a str>,
    /// Its position in the log (orders the versions of one resource).
    pub position: u64,
    /// Its clinical time.
    pub at: Timestamp,
    /// The change itself.
    pub change: &'a Change,
}

impl<'a> EffectView<'a> {
    /// The view of a recorded instance event of `instance_id` for `subject` in `tenant`,
    /// at log `position`.
    pub fn new(
        recorded: &'a Recorded,
        tenant: &'a str,
        subject: &'a str,
        instance_id: &'a str,
        position: u64,
    ) -> EffectView<'a> {
        EffectView {
            effect_id: recorded.id,
            tenant,
            subject,
            instance_id,
            cause: &recorded.cause,
            rule: recorded.rule.as_deref(),
            position,
            at: recorded.at,
            change: &recorded.change,
        }
    }
}

/// The FHIR resource of an effect: a Task for task and handoff effects, a Communication
/// for alert effects, `None` for changes that are not such effects (state changes,
/// timers, enrolment).
pub fn resource(effect: &EffectView<'_>) -> Option<Value> {
    task_resource(effect).or_else(|| communication_resource(effect))
}

/// The FHIR Task of a task or handoff effect (`None` for any other change).
pub fn task_resource(effect: &EffectView<'_>) -> Option<Value> {
    task(effect).and_then(|t| serde_json::to_value(t).ok())
}

/// The FHIR Communication of an alert effect (`None` for any other change).
pub fn communication_resource(effect: &EffectView<'_>) -> Option<Value> {
    communication(effect).and_then(|c| serde_json::to_value(c).ok())
}

/// [`task_resource`], typed.
pub fn task(effect: &EffectView<'_>) -> Option<Task> {
    let e = effect;
    let mut t = match e.change {
        Change::TaskRequested {
            task_id,
            code,
            role,
            title,
            due_at,
            priority,
        } => Task {
            status: Some("ready".into()),
            priority: Some(priority_code(*priority).into()),
            code: Some(task_code(code, Some(&**title))),
            description: Some(title.to_string()),
            authored_on: Some(e.at.to_string()),
            restriction: Some(due(*due_at)),
            ..base_task(e, *task_id, TASK_SYSTEM, "requested", role)
        },
        Change::TaskReminded {
            task_id,
            code,
            role,
        } => Task {
            status: Some("ready".into()),
            code: Some(task_code(code, None)),
            ..base_task(e, *task_id, TASK_SYSTEM, "reminded", role)
        },
        Change::TaskOverdue {
            task_id,
            code,
            role,
        } => Task {
            status: Some("ready".into()),
            code: Some(task_code(code, None)),
            ..base_task(e, *task_id, TASK_SYSTEM, "overdue", role)
        },
        Change::TaskEscalated {
            task_id,
            code,
            role,
            priority,
            ..
        } => Task {
            status: Some("ready".into()),
            priority: Some(priority_code(*priority).into()),
            code: Some(task_code(code, None)),
            ..base_task(e, *task_id, TASK_SYSTEM, "escalated", role)
        },
        Change::TaskClosed {
            task_id,
            code,
            outcome,
            ..
        } => {
            let (status, business, reason) = match outcome {
                TaskOutcome::Completed => ("completed", "completed", None),
                TaskOutcome::NotNeeded => ("cancelled", "not-needed", Some("not-needed")),
                TaskOutcome::CouldNotBeDone => {
                    ("failed", "could-not-be-done", Some("could-not-be-done"))
                }
            };
            let mut t = Task {
                status: Some(status.into()),
                status_reason: reason.map(|r| CodeableConcept::coded(TASK_STATUS_REASON_SYSTEM, r)),
                code: Some(task_code(code, None)),
                execution_period: Some(Period {
                    start: None,
                    end: Some(e.at.to_string()),
                }),
                ..base_task(e, *task_id, TASK_SYSTEM, business, "")
            };
            t.owner = None;
            t.performer_type = Vec::new();
            t
        }
        Change::HandoffRequested {
            handoff_id,
            code,
            from,
            to,
            title,
            accept_by,
        } => Task {
            status: Some("requested".into()),
            code: Some(handoff_code(code, Some(title.as_str()))),
            description: Some(title.clone()),
            authored_on: Some(e.at.to_string()),
            requester: Some(role_ref(from)),
            restriction: Some(due(*accept_by)),
            ..base_task(e, *handoff_id, HANDOFF_SYSTEM, "requested", to)
        },
        Change::HandoffEscalated {
            handoff_id,
            code,
            role,
        } => Task {
            status: Some("requested".into()),
            code: Some(handoff_code(code, None)),
            ..base_task(e, *handoff_id, HANDOFF_SYSTEM, "escalated", role)
        },
        Change::HandoffClosed {
            handoff_id,
            code,
            accepted,
        } => {
            let (status, business) = if *accepted {
                ("completed", "accepted")
            } else {
                ("cancelled", "not-accepted")
            };
            let mut t = Task {
                status: Some(status.into()),
                code: Some(handoff_code(code, None)),
                ..base_task(e, *handoff_id, HANDOFF_SYSTEM, business, "")
            };
            t.owner = None;
            t.performer_type = Vec::new();
            t
        }
        _ => return None,
    };
    t.resource_type = "Task".into();
    Some(t)
}

/// [`communication_resource`], typed.
pub fn communication(effect: &EffectView<'_>) -> Option<Communication> {
    let e = effect;
    let c = match e.change {
        Change::AlertRaised {
            alert_id,
            code,
            severity,
            role,
            message,
        } => Communication {
            status: Some("in-progress".into()),
            priority: Some(severity_priority(*severity).into()),
            recipient: vec![role_ref(role)],
            payload: vec![Payload {
                content_string: Some(message.clone()),
            }],
            ..base_communication(e, *alert_id, code, "raised")
        },
        Change::AlertEscalated {
            alert_id,
            code,
            role,
        } => Communication {
            status: Some("in-progress".into()),
            recipient: vec![role_ref(role)],
            ..base_communication(e, *alert_id, code, "escalated")
        },
        Change::AlertClosed { alert_id, code } => Communication {
            status: Some("completed".into()),
            ..base_communication(e, *alert_id, code, "closed")
        },
        _ => return None,
    };
    Some(c)
}

fn meta(e: &EffectView<'_>) -> Meta {
    Meta {
        version_id: Some(e.position.to_string()),
        last_updated: Some(e.at.to_string()),
        profile: Vec::new(),
        tag: vec![Coding::new(TENANT_SYSTEM, e.tenant)],
    }
}

fn common_references(e: &EffectView<'_>) -> (Vec<Reference>, Reference) {
    let instance = Reference::logical("CarePlan", INSTANCE_SYSTEM, e.instance_id);
    let subject = Reference::logical("Patient", SUBJECT_SYSTEM, e.subject);
    (vec![instance], subject)
}

fn base_task(
    e: &EffectView<'_>,
    id: Uuid,
    id_system: &str,
    business_status: &str,
    role: &str,
) -> Task {
    let (based_on, subject) = common_references(e);
    let role = (!role.is_empty()).then_some(role);
    Task {
        resource_type: "Task".into(),
        id: Some(id.to_string()),
        meta: Some(meta(e)),
        identifier: vec![
            Identifier::new(id_system, id.to_string()),
            Identifier::new(EFFECT_SYSTEM, e.effect_id.to_string()),
        ],
        based_on,
        business_status: Some(CodeableConcept::coded(
            BUSINESS_STATUS_SYSTEM,
            business_status,
        )),
        intent: Some("order".into()),
        for_: Some(subject),
        last_modified: Some(e.at.to_string()),
        performer_type: role
            .map(|r| CodeableConcept {
                coding: vec![Coding::new(ROLE_SYSTEM, r)],
                text: Some(r.to_owned()),
            })
            .into_iter()
            .collect(),
        owner: role.map(role_ref),
        reason_code: e.rule.map(|r| CodeableConcept::coded(RULE_SYSTEM, r)),
        reason_reference: Some(cause_ref(e)),
        ..Task::default()
    }
}

fn base_communication(
    e: &EffectView<'_>,
    alert_id: Uuid,
    code: &str,
    business_status: &str,
) -> Communication {
    let (based_on, subject) = common_references(e);
    Communication {
        resource_type: "Communication".into(),
        id: Some(alert_id.to_string()),
        meta: Some(Meta {
            tag: vec![
                Coding::new(TENANT_SYSTEM, e.tenant),
                Coding::new(BUSINESS_STATUS_SYSTEM, business_status),
            ],
            ..meta(e)
        }),
        identifier: vec![
            Identifier::new(ALERT_SYSTEM, alert_id.to_string()),
            Identifier::new(EFFECT_SYSTEM, e.effect_id.to_string()),
        ],
        based_on,
        category: vec![CodeableConcept::coded(COMMUNICATION_CATEGORY, "alert")],
        subject: Some(subject),
        topic: Some(CodeableConcept::coded(ALERT_CODE_SYSTEM, code)),
        about: vec![cause_ref(e)],
        sent: Some(e.at.to_string()),
        reason_code: e
            .rule
            .map(|r| CodeableConcept::coded(RULE_SYSTEM, r))
            .into_iter()
            .collect(),
        ..Communication::default()
    }
}

fn cause_ref(e: &EffectView<'_>) -> Reference {
    Reference {
        identifier: Some(Identifier::new(EVENT_SYSTEM, e.cause)),
        ..Reference::default()
    }
}

/// Show on the resource of an open item (read from its request: [`resource`]) the role
/// its latest escalation told: a Task's `owner` becomes that role (it is now responsible
/// for the task being done; `performerType` keeps who performs it), a Communication's
/// `recipient` gains it. What the escalation's own effect says, so that a Task found by
/// `?owner=` with the escalated role names that role as its owner.
pub fn show_escalation(resource: &mut Value, role: &str) {
    let Ok(reference) = serde_json::to_value(role_ref(role)) else {
        return;
    };
    match resource["resourceType"].as_str() {
        Some("Task") => resource["owner"] = reference,
        Some("Communication") => match resource["recipient"].as_array_mut() {
            Some(to) if to.contains(&reference) => {}
            Some(to) => to.push(reference),
            None => resource["recipient"] = Value::Array(vec![reference]),
        },
        _ => {}
    }
}

fn role_ref(role: &str) -> Reference {
    Reference {
        display: Some(role.to_owned()),
        ..Reference::logical("PractitionerRole", ROLE_SYSTEM, role)
    }
}

fn task_code(code: &str, title: Option<&str>) -> CodeableConcept {
    CodeableConcept {
        coding: vec![Coding::new(TASK_CODE_SYSTEM, code)],
        text: title.map(str::to_owned),
    }
}

fn handoff_code(code: &str, title: Option<&str>) -> CodeableConcept {
    CodeableConcept {
        coding: vec![
            Coding::new(TASK_CODE_SYSTEM, "handoff"),
            Coding::new(HANDOFF_CODE_SYSTEM, code),
        ],
        text: title.map(str::to_owned),
    }
}

fn due(at: Timestamp) -> Restriction {
    Restriction {
        period: Some(Period {
            start: None,
            end: Some(at.to_string()),
        }),
        ..Restriction::default()
    }
}

/// Pathway priority → FHIR request priority (the same four codes).
pub fn priority_code(p: Priority) -> &'static str {
    match p {
        Priority::Routine => "routine",
        Priority::Urgent => "urgent",
        Priority::Asap => "asap",
        Priority::Stat => "stat",
    }
}

/// Alert severity → FHIR request priority: low → routine, medium → urgent,
/// high → asap, critical → stat.
pub fn severity_priority(s: Severity) -> &'static str {
    match s {
        Severity::Low => "routine",
        Severity::Medium => "urgent",
        Severity::High => "asap",
        Severity::Critical => "stat",
    }
}
