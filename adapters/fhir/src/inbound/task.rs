//! Task → `task.completed`, `task.not_needed`, `task.could_not_be_done`,
//! `handoff.accepted`, `handoff.declined`; Communication → `alert.acknowledged`.

use jiff::Timestamp;
use parcours_core::EventData;
use parcours_core::events::data;

use super::identity;
use super::json::typed;
use super::{Mapped, Scope};
use crate::outcome::{Issue, IssueType, Refusal};
use crate::r4::{CodeableConcept, Communication, Identifier, Task};
use crate::{
    ALERT_CODE_SYSTEM, ALERT_SYSTEM, HANDOFF_CODE_SYSTEM, HANDOFF_SYSTEM, TASK_CODE_SYSTEM,
    TASK_STATUS_REASON_SYSTEM, TASK_SYSTEM,
};

const TASK_STATUSES: &[&str] = &[
    "draft",
    "requested",
    "received",
    "accepted",
    "rejected",
    "ready",
    "cancelled",
    "in-progress",
    "on-hold",
    "failed",
    "completed",
    "entered-in-error",
];

const INTENTS: &[&str] = &[
    "unknown",
    "proposal",
    "plan",
    "order",
    "original-order",
    "reflex-order",
    "filler-order",
    "instance-order",
    "option",
];

const COMMUNICATION_STATUSES: &[&str] = &[
    "preparation",
    "in-progress",
    "not-done",
    "on-hold",
    "stopped",
    "completed",
    "entered-in-error",
    "unknown",
];

/// Status reasons (text, lower-cased) that mean "cancelled because not needed".
const NOT_NEEDED_TEXTS: &[&str] = &[
    "not needed",
    "not-needed",
    "no longer needed",
    "non nécessaire",
    "non necessaire",
    "plus nécessaire",
    "plus necessaire",
    "inutile",
    "sans objet",
];

fn identifier_in<'a>(ids: &'a [Identifier], system: &str) -> Option<(usize, &'a str)> {
    ids.iter().enumerate().find_map(|(i, id)| {
        (id.system.as_deref().map(str::trim) == Some(system))
            .then(|| id.value.as_deref().map(str::trim))
            .flatten()
            .filter(|v| !v.is_empty())
            .map(|v| (i, v))
    })
}

fn code_in(code: Option<&CodeableConcept>, system: &str) -> String {
    code.and_then(|c| c.code_in(system))
        .map(|c| c.trim().to_owned())
        .unwrap_or_default()
}

pub(super) fn map_task(scope: &Scope<'_>) -> Result<Mapped, Refusal> {
    let task: Task = typed(scope.raw, &scope.prefix)?;
    let status = match task.status.as_deref() {
        None => {
            return Err(
                Refusal::bad_request(IssueType::Required, "Task.status is required")
                    .at(scope.at("status")),
            );
        }
        Some(s) if TASK_STATUSES.contains(&s) => s,
        Some(_) => {
            return Err(Refusal::bad_request(
                IssueType::CodeInvalid,
                "Task.status is not a code of the TaskStatus value set",
            )
            .at(scope.at("status")));
        }
    };
    match task.intent.as_deref() {
        None => {
            return Err(
                Refusal::bad_request(IssueType::Required, "Task.intent is required")
                    .at(scope.at("intent")),
            );
        }
        Some(i) if INTENTS.contains(&i) => {}
        Some(_) => {
            return Err(Refusal::bad_request(
                IssueType::CodeInvalid,
                "Task.intent is not a code of the TaskIntent value set",
            )
            .at(scope.at("intent")));
        }
    }
    if let Some((_, handoff_id)) = identifier_in(&task.identifier, HANDOFF_SYSTEM) {
        return handoff(scope, &task, status, handoff_id.to_owned());
    }
    let data = match status {
        "completed" => Outcome::Completed,
        "cancelled" if not_needed(task.status_reason.as_ref()) => Outcome::NotNeeded,
        "cancelled" | "failed" | "rejected" => Outcome::CouldNotBeDone,
        "entered-in-error" => {
            return Ok(Mapped::skipped(
                Issue::warning(
                    IssueType::BusinessRule,
                    "a task entered in error has no outcome: it was not used (send cancelled with a reason)",
                )
                .at(scope.at("status")),
            ));
        }
        _ => {
            return Ok(Mapped::skipped(
                Issue::information(
                    IssueType::Informational,
                    "only outcomes are events (completed, cancelled, failed, rejected): this progress update was not recorded",
                )
                .at(scope.at("status")),
            ));
        }
    };
    let task_id = match identifier_in(&task.identifier, TASK_SYSTEM) {
        Some((_, v)) => v.to_owned(),
        None => match task
            .id
            .as_deref()
            .filter(|id| uuid::Uuid::parse_str(id).is_ok())
        {
            Some(id) => id.to_owned(),
            None => {
                return Err(Refusal::unprocessable(
                    IssueType::Required,
                    "the task parcours gave is named by an identifier with system urn:parcours:task (or a Task.id that is that task id)",
                )
                .at(scope.at("identifier")));
            }
        },
    };
    let code = code_in(task.code.as_ref(), TASK_CODE_SYSTEM);
    let at = task_time(scope, &task, status == "completed")?;
    let subject = identity::subject(scope, task.for_.as_ref(), "for")?;
    let data = match data {
        Outcome::Completed => EventData::TaskCompleted(data::TaskCompleted { task_id, code }),
        Outcome::NotNeeded => EventData::TaskNotNeeded(data::TaskNotNeeded { task_id, code }),
        Outcome::CouldNotBeDone => {
            EventData::TaskCouldNotBeDone(data::TaskCouldNotBeDone { task_id, code })
        }
    };
    Ok(Mapped {
        events: vec![scope.event("", &subject, at, data)],
        issues: Vec::new(),
    })
}

enum Outcome {
    Completed,
    NotNeeded,
    CouldNotBeDone,
}

/// Whether a cancellation reason says "not needed": the parcours code, or one of a few
/// fixed phrases. Anything else is a failure ("could not be done"): when in doubt, the
/// pathway escalates to a person rather than counting the task as done.
fn not_needed(reason: Option<&CodeableConcept>) -> bool {
    let Some(reason) = reason else { return false };
    if reason
        .coding
        .iter()
        .any(|c| c.is(TASK_STATUS_REASON_SYSTEM, "not-needed"))
    {
        return true;
    }
    let text = reason
        .text
        .as_deref()
        .into_iter()
        .chain(reason.coding.iter().filter_map(|c| c.display.as_deref()));
    text.map(|t| t.trim().to_lowercase())
        .any(|t| NOT_NEEDED_TEXTS.contains(&t.as_str()))
}

/// When the outcome happened: executionPeriod.end for a completion, else lastModified,
/// else meta.lastUpdated.
fn task_time(scope: &Scope<'_>, task: &Task, completed: bool) -> Result<Timestamp, Refusal> {
    if completed && let Some(t) = task.execution_period.as_ref().and_then(|p| p.end.as_ref()) {
        return scope.time(t, "executionPeriod.end");
    }
    if let Some(t) = &task.last_modified {
        return scope.time(t, "lastModified");
    }
    if let Some(t) = task.meta.as_ref().and_then(|m| m.last_updated.as_ref()) {
        return scope.time(t, "meta.lastUpdated");
    }
    Err(Refusal::unprocessable(
        IssueType::Required,
        "the task outcome needs a time: lastModified (or executionPeriod.end when completed)",
    )
    .at(scope.at("lastModified")))
}

fn handoff(
    scope: &Scope<'_>,
    task: &Task,
    status: &str,
    handoff_id: String,
) -> Result<Mapped, Refusal> {
    let accepted = match status {
        "accepted" | "in-progress" | "completed" => true,
        "rejected" | "cancelled" | "failed" => false,
        _ => {
            return Ok(Mapped::skipped(
                Issue::information(
                    IssueType::Informational,
                    "only an acceptance or a refusal of a handoff is an event: nothing was recorded",
                )
                .at(scope.at("status")),
            ));
        }
    };
    let code = code_in(task.code.as_ref(), HANDOFF_CODE_SYSTEM);
    let at = task_time(scope, task, false)?;
    let subject = identity::subject(scope, task.for_.as_ref(), "for")?;
    let data = if accepted {
        EventData::HandoffAccepted(data::HandoffAccepted { handoff_id, code })
    } else {
        EventData::HandoffDeclined(data::HandoffDeclined { handoff_id, code })
    };
    Ok(Mapped {
        events: vec![scope.event("", &subject, at, data)],
        issues: Vec::new(),
    })
}

pub(super) fn map_communication(scope: &Scope<'_>) -> Result<Mapped, Refusal> {
    let communication: Communication = typed(scope.raw, &scope.prefix)?;
    let status = match communication.status.as_deref() {
        None => {
            return Err(Refusal::bad_request(
                IssueType::Required,
                "Communication.status is required",
            )
            .at(scope.at("status")));
        }
        Some(s) if COMMUNICATION_STATUSES.contains(&s) => s,
        Some(_) => {
            return Err(Refusal::bad_request(
                IssueType::CodeInvalid,
                "Communication.status is not a code of the EventStatus value set",
            )
            .at(scope.at("status")));
        }
    };
    let Some((_, alert_id)) = identifier_in(&communication.identifier, ALERT_SYSTEM) else {
        return Ok(Mapped::skipped(
            Issue::warning(
                IssueType::NotSupported,
                "only acknowledgements of parcours alerts (identifier system urn:parcours:alert) are read: this communication was not used",
            )
            .at(scope.at("identifier")),
        ));
    };
    if status != "completed" {
        return Ok(Mapped::skipped(
            Issue::information(
                IssueType::Informational,
                "an alert is acknowledged by status completed: nothing was recorded",
            )
            .at(scope.at("status")),
        ));
    }
    let (text, rel) = if let Some(t) = &communication.received {
        (t, "received")
    } else if let Some(t) = communication
        .meta
        .as_ref()
        .and_then(|m| m.last_updated.as_ref())
    {
        (t, "meta.lastUpdated")
    } else {
        return Err(Refusal::unprocessable(
            IssueType::Required,
            "an acknowledgement needs a time: received (or meta.lastUpdated)",
        )
        .at(scope.at("received")));
    };
    let at = scope.time(text, rel)?;
    let subject = identity::subject(scope, communication.subject.as_ref(), "subject")?;
    let data = data::AlertAcknowledged {
        alert_id: alert_id.to_owned(),
        code: code_in(communication.topic.as_ref(), ALERT_CODE_SYSTEM),
    };
    Ok(Mapped {
        events: vec![scope.event("", &subject, at, EventData::AlertAcknowledged(data))],
        issues: Vec::new(),
    })
}
