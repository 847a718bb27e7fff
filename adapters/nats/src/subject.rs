//! The subject scheme. Tenant first, so NATS accounts and permissions can split tenants;
//! never a patient identifier.
//!
//! | subject | what |
//! |---|---|
//! | `parcours.<tenant>.in.p<NN>.<event-type>` | inbound events; `NN` = [`partition_of`] (two digits) |
//! | `parcours.<tenant>.out.task` / `.alert` / `.handoff` | effects, after commit |
//! | `parcours.<tenant>.dlq` | what could not be processed, with the reason in headers |
//! | `parcours._unknown.dlq` | dead letters whose tenant is unknown or malformed |

use parcours_core::events::Event;
use parcours_core::state::EffectKind;
use parcours_store::partition_of;

/// First token of every subject.
pub const PREFIX: &str = "parcours";

/// Tenant token of dead letters whose tenant cannot be trusted.
pub const UNKNOWN_TENANT: &str = parcours_core::events::RESERVED_TENANT;

pub use parcours_core::events::{check_envelope, valid_tenant};

/// The partition token: `p03`.
pub fn partition_token(partition: u16) -> String {
    format!("p{partition:02}")
}

/// The inbound subject of an event (its envelope must have passed [`check_envelope`]).
pub fn inbound_subject(event: &Event, partitions: u16) -> Result<String, String> {
    check_envelope(event)?;
    let p = partition_of(&event.tenant, &event.subject, partitions);
    Ok(format!(
        "{PREFIX}.{}.in.{}.{}",
        event.tenant,
        partition_token(p),
        event.event_type()
    ))
}

/// What a partition's consumer reads: `parcours.*.in.p03.>`.
pub fn partition_filter(partition: u16) -> String {
    format!("{PREFIX}.*.in.{}.>", partition_token(partition))
}

/// The durable consumer of a partition: `in-p03`.
pub fn consumer_name(partition: u16) -> String {
    format!("in-{}", partition_token(partition))
}

/// The subject token of an effect kind (`None` for timers: they are not published).
pub fn effect_token(kind: EffectKind) -> Option<&'static str> {
    match kind {
        EffectKind::Task => Some("task"),
        EffectKind::Alert => Some("alert"),
        EffectKind::Handoff => Some("handoff"),
        EffectKind::Timer => None,
    }
}

/// Where an effect goes: `parcours.<tenant>.out.<task|alert|handoff>`.
pub fn effect_subject(tenant: &str, kind: EffectKind) -> Result<String, String> {
    if !valid_tenant(tenant) {
        return Err("the effect's tenant is not a valid subject token".into());
    }
    let token = effect_token(kind).ok_or("timer changes are not published")?;
    Ok(format!("{PREFIX}.{tenant}.out.{token}"))
}

/// The dead-letter subject of a tenant, or of [`UNKNOWN_TENANT`] when it is not valid.
pub fn dlq_subject(tenant: Option<&str>) -> String {
    match tenant {
        Some(t) if valid_tenant(t) => format!("{PREFIX}.{t}.dlq"),
        _ => format!("{PREFIX}.{UNKNOWN_TENANT}.dlq"),
    }
}

/// Where hospitals publish FHIR R4 JSON (a resource or a Bundle) for a tenant:
/// `parcours.<tenant>.fhir.in`. The patient is named inside the resource, never here.
pub fn fhir_subject(tenant: &str) -> Result<String, String> {
    if !valid_tenant(tenant) {
        return Err(format!(
            "`tenant` must be {}",
            parcours_core::events::TENANT_RULE
        ));
    }
    Ok(format!("{PREFIX}.{tenant}.fhir.in"))
}

/// What the FHIR consumer reads: every tenant's `parcours.*.fhir.in`.
pub fn fhir_filter() -> String {
    format!("{PREFIX}.*.fhir.in")
}

/// The tenant token of a FHIR inbound subject (`None` when the subject is not one; the
/// token is not checked here: see [`valid_tenant`]).
pub fn parse_fhir(subject: &str) -> Option<&str> {
    let rest = subject.strip_prefix(PREFIX)?.strip_prefix('.')?;
    let tenant = rest.strip_suffix(".fhir.in")?;
    (!tenant.is_empty() && !tenant.contains('.')).then_some(tenant)
}

/// An inbound subject, taken apart.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Inbound<'a> {
    pub(crate) tenant: &'a str,
    pub(crate) partition: u16,
    pub(crate) event_type: &'a str,
}

/// Take an inbound subject apart (`None` when it does not follow the scheme).
pub(crate) fn parse_inbound(subject: &str) -> Option<Inbound<'_>> {
    let rest = subject.strip_prefix(PREFIX)?.strip_prefix('.')?;
    let (tenant, rest) = rest.split_once('.')?;
    let rest = rest.strip_prefix("in.")?;
    let (p, event_type) = rest.split_once('.')?;
    let digits = p.strip_prefix('p')?;
    if digits.len() != 2 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let partition = digits.parse().ok()?;
    Some(Inbound {
        tenant,
        partition,
        event_type,
    })
}

/// Whether a decoded event belongs on the subject it arrived on; the reason otherwise.
/// The tenant token is what NATS permissions were checked against, so an event naming
/// another tenant is refused; a partition computed with another partition count would
/// break per-patient ordering.
pub(crate) fn check_routing(
    inbound: &Inbound<'_>,
    event: &Event,
    partitions: u16,
) -> Result<(), String> {
    if inbound.tenant != event.tenant {
        return Err(format!(
            "the event's tenant differs from the subject's tenant `{}`",
            inbound.tenant
        ));
    }
    if inbound.event_type != event.event_type().as_str() {
        return Err(format!(
            "the event's type `{}` differs from the subject's `{}`",
            event.event_type(),
            inbound.event_type
        ));
    }
    let expected = partition_of(&event.tenant, &event.subject, partitions);
    if inbound.partition != expected {
        return Err(format!(
            "published on partition {} but this engine, with {partitions} partitions, puts this \
             patient on partition {}: publishers and engines must use the same partition count",
            partition_token(inbound.partition),
            partition_token(expected)
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use parcours_core::events::{EventData, EventType};

    fn event(tenant: &str, subject: &str, ty: EventType) -> Event {
        let data = match ty {
            EventType::TimerFired => serde_json::json!({"timer_id": "t"}),
            _ => serde_json::json!({"encounter_id": "V1"}),
        };
        Event {
            id: "e-1".into(),
            tenant: tenant.into(),
            source: "test".into(),
            subject: subject.into(),
            occurred_at: "2026-03-02T09:00:00Z".parse().expect("time"),
            recorded_at: None,
            data: EventData::from_json(ty, data).expect("payload"),
        }
    }

    #[test]
    fn inbound_subjects_are_tenant_first_and_partitioned() {
        let e = event("cpts-a", "p-1", EventType::EncounterDischarged);
        // partition_of("cpts-a", "p-1", 16) is pinned to 4 in parcours-store.
        assert_eq!(
            inbound_subject(&e, 16).expect("valid"),
            "parcours.cpts-a.in.p04.encounter.discharged"
        );
        let parsed = parse_inbound("parcours.cpts-a.in.p04.encounter.discharged").expect("parses");
        assert_eq!(
            parsed,
            Inbound {
                tenant: "cpts-a",
                partition: 4,
                event_type: "encounter.discharged"
            }
        );
        assert_eq!(check_routing(&parsed, &e, 16), Ok(()));
        let wrong = parse_inbound("parcours.cpts-b.in.p04.encounter.discharged").expect("parses");
        assert!(check_routing(&wrong, &e, 16).is_err());
        let wrong = parse_inbound("parcours.cpts-a.in.p05.encounter.discharged").expect("parses");
        assert!(check_routing(&wrong, &e, 16).is_err());
        let wrong = parse_inbound("parcours.cpts-a.in.p04.encounter.admitted").expect("parses");
        assert!(check_routing(&wrong, &e, 16).is_err());
        for bad in [
            "parcours.cpts-a.in.p4.x",
            "parcours.cpts-a.in.pxx.x",
            "parcours.cpts-a.out.task",
            "other.cpts-a.in.p04.x",
            "parcours.cpts-a.in.p04",
        ] {
            assert_eq!(parse_inbound(bad), None, "{bad}");
        }
        assert_eq!(partition_filter(7), "parcours.*.in.p07.>");
        assert_eq!(consumer_name(99), "in-p99");
    }

    #[test]
    fn tenants_and_envelopes_are_checked_before_they_become_subjects() {
        for bad in ["", "Cpts", "a.b", "a*", "a>", "a b", &"x".repeat(65)] {
            assert!(!valid_tenant(bad), "{bad:?}");
            assert!(
                inbound_subject(&event(bad, "p-1", EventType::EncounterDischarged), 4).is_err()
            );
        }
        assert!(valid_tenant("cpts_92-nord"));
        assert!(
            inbound_subject(
                &event("cpts-a", "Jean Dupont", EventType::EncounterDischarged),
                4
            )
            .is_err()
        );
        let internal = inbound_subject(&event("cpts-a", "p-1", EventType::TimerFired), 4);
        assert!(internal.is_err_and(|m| m.contains("timer.fired")));
        assert_eq!(
            effect_subject("cpts-a", EffectKind::Alert).as_deref(),
            Ok("parcours.cpts-a.out.alert")
        );
        assert!(effect_subject("cpts-a", EffectKind::Timer).is_err());
        assert!(effect_subject("a.b", EffectKind::Task).is_err());
        assert_eq!(dlq_subject(Some("cpts-a")), "parcours.cpts-a.dlq");
        assert_eq!(dlq_subject(Some("a.*")), "parcours._unknown.dlq");
        assert_eq!(dlq_subject(None), "parcours._unknown.dlq");
    }

    #[test]
    fn fhir_subjects_name_the_tenant_only() {
        assert_eq!(
            fhir_subject("cpts-a").as_deref(),
            Ok("parcours.cpts-a.fhir.in")
        );
        assert!(fhir_subject("a.b").is_err());
        assert_eq!(fhir_filter(), "parcours.*.fhir.in");
        assert_eq!(parse_fhir("parcours.cpts-a.fhir.in"), Some("cpts-a"));
        assert_eq!(parse_fhir("parcours.a.b.fhir.in"), None);
        assert_eq!(parse_fhir("parcours.cpts-a.in.p01.x"), None);
    }
}
