//! Tracing of processed events: one `ingest_batch` span per batch (a group commit, or a
//! round of due timers), and below it one `event` span per inbound event with its
//! tenant, type, id, pseudonymous subject key, outcome and the instances it touched.
//! Each `event` span holds one `event processed` log event, so a JSON log has one line
//! per processed event and an OpenTelemetry exporter one span.
//!
//! Only identifiers that are not patient data are recorded: event ids, instance ids
//! (UUIDs) and the HMAC subject key. Never the payload (codes, values), nor the source's
//! own identifiers: adapters have already replaced names, INS/NIR, IPP and birth dates
//! by the subject key before an event reaches the runtime.

use parcours_core::events::Event;
use tracing::Span;
use tracing::field::Empty;

use crate::engine::{IngestOutcome, Refused, RuntimeError};

/// The span of one batch of `events` events, from `source` (`intake` or `timers`).
pub(crate) fn batch(source: &'static str, events: usize) -> Span {
    tracing::info_span!(
        "ingest_batch",
        source,
        events,
        committed = Empty,
        duplicates = Empty,
        refused = Empty,
        error = Empty,
    )
}

/// One span per event, children of `batch`, opened now (so they time the batch).
pub(crate) fn events(batch: &Span, events: &[Event]) -> Vec<Span> {
    if batch.is_disabled() {
        return Vec::new();
    }
    events
        .iter()
        .map(|e| {
            tracing::info_span!(
                parent: batch,
                "event",
                tenant = %e.tenant,
                event_type = e.event_type().as_str(),
                event_id = %e.id,
                subject = %e.subject,
                outcome = Empty,
                instances = Empty,
                instance_ids = Empty,
                effects = Empty,
                reason = Empty,
            )
        })
        .collect()
}

/// Record what the batch did on its span and each event's, and log one line per event
/// inside its span. The spans close when dropped here.
pub(crate) fn finish(
    batch: &Span,
    spans: Vec<Span>,
    result: &Result<Vec<Result<IngestOutcome, Refused>>, RuntimeError>,
) {
    match result {
        Ok(outcomes) => {
            let (mut committed, mut duplicates, mut refused) = (0u64, 0u64, 0u64);
            for (span, outcome) in spans.iter().zip(outcomes) {
                match outcome {
                    Ok(IngestOutcome::Committed {
                        events: _,
                        effects,
                        instances,
                        warnings: _,
                    }) => {
                        committed += 1;
                        span.record("outcome", "committed");
                        span.record("instances", instances.len());
                        span.record("instance_ids", instances.join(",").as_str());
                        span.record("effects", *effects);
                    }
                    Ok(IngestOutcome::Duplicate) => {
                        duplicates += 1;
                        span.record("outcome", "duplicate");
                        span.record("instances", 0);
                    }
                    Ok(IngestOutcome::CommittedByOwner { .. }) => {
                        span.record("outcome", "committed_by_owner");
                    }
                    Ok(IngestOutcome::Queued) => {
                        span.record("outcome", "queued");
                    }
                    Err(r) => {
                        refused += 1;
                        span.record("outcome", "refused");
                        span.record("instances", 0);
                        span.record("reason", r.to_string().as_str());
                    }
                }
                span.in_scope(|| tracing::info!("event processed"));
            }
            batch.record("committed", committed);
            batch.record("duplicates", duplicates);
            batch.record("refused", refused);
        }
        Err(e) => {
            batch.record("error", e.to_string().as_str());
            for span in &spans {
                span.record("outcome", "failed");
                span.in_scope(|| tracing::warn!("event not processed"));
            }
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::sync::{Arc, Mutex};

    use parcours_core::events::{EventData, data};
    use tracing::field::{Field, Visit};
    use tracing::span::{Attributes, Id, Record};
    use tracing::{Subscriber, subscriber};

    use super::*;

    /// A span seen: its name, its parent's id, its fields in recording order.
    type Seen = (String, Option<u64>, Vec<(String, String)>);

    /// A subscriber that keeps every span's fields by span id, and the parent of each.
    #[derive(Default, Clone)]
    struct Spans(Arc<Mutex<Vec<Seen>>>);

    struct Fields<'a>(&'a mut Vec<(String, String)>);

    impl Visit for Fields<'_> {
        fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
            self.0.push((field.name().into(), format!("{value:?}")));
        }
        fn record_str(&mut self, field: &Field, value: &str) {
            self.0.push((field.name().into(), value.into()));
        }
    }

    impl Subscriber for Spans {
        fn enabled(&self, _: &tracing::Metadata<'_>) -> bool {
            true
        }
        fn new_span(&self, span: &Attributes<'_>) -> Id {
            let mut all = self.0.lock().expect("lock");
            let mut fields = Vec::new();
            span.record(&mut Fields(&mut fields));
            let parent = span.parent().map(Id::into_u64);
            all.push((span.metadata().name().into(), parent, fields));
            Id::from_u64(all.len() as u64)
        }
        fn record(&self, span: &Id, values: &Record<'_>) {
            let mut all = self.0.lock().expect("lock");
            let i = span.into_u64() as usize - 1;
            values.record(&mut Fields(&mut all[i].2));
        }
        fn record_follows_from(&self, _: &Id, _: &Id) {}
        fn event(&self, _: &tracing::Event<'_>) {}
        fn enter(&self, _: &Id) {}
        fn exit(&self, _: &Id) {}
    }

    /// A consent of one patient, for tests of what carries events.
    pub(crate) fn event(id: &str) -> Event {
        Event {
            id: id.into(),
            tenant: "cpts-a".into(),
            source: "test".into(),
            subject: "p-0123".into(),
            occurred_at: "2026-03-01T10:00:00Z".parse().expect("ts"),
            recorded_at: None,
            data: EventData::ConsentGiven(data::ConsentGiven::default()),
        }
    }

    #[test]
    fn each_event_gets_a_span_below_its_batch_with_its_outcome() {
        let spans = Spans::default();
        subscriber::with_default(spans.clone(), || {
            let b = batch("intake", 3);
            let evs = [event("e1"), event("e2"), event("e3")];
            let s = events(&b, &evs);
            finish(
                &b,
                s,
                &Ok(vec![
                    Ok(IngestOutcome::Committed {
                        events: 2,
                        effects: 1,
                        instances: vec!["i-1".into(), "i-2".into()],
                        warnings: Vec::new(),
                    }),
                    Ok(IngestOutcome::Duplicate),
                    Err(Refused::Invalid("no".into())),
                ]),
            );
        });
        let all = spans.0.lock().expect("lock");
        assert_eq!(all.len(), 4);
        let field = |i: usize, name: &str| {
            all[i]
                .2
                .iter()
                .rev()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.clone())
        };
        assert_eq!(all[0].0, "ingest_batch");
        assert_eq!(field(0, "committed").as_deref(), Some("1"));
        assert_eq!(field(0, "duplicates").as_deref(), Some("1"));
        assert_eq!(field(0, "refused").as_deref(), Some("1"));
        for i in 1..4 {
            assert_eq!(all[i].0, "event");
            assert_eq!(all[i].1, Some(1), "child of the batch");
            assert_eq!(field(i, "tenant").as_deref(), Some("cpts-a"));
            assert_eq!(field(i, "subject").as_deref(), Some("p-0123"));
            assert_eq!(field(i, "event_type").as_deref(), Some("consent.given"));
        }
        assert_eq!(field(1, "event_id").as_deref(), Some("e1"));
        assert_eq!(field(1, "outcome").as_deref(), Some("committed"));
        assert_eq!(field(1, "instance_ids").as_deref(), Some("i-1,i-2"));
        assert_eq!(field(1, "instances").as_deref(), Some("2"));
        assert_eq!(field(2, "outcome").as_deref(), Some("duplicate"));
        assert_eq!(field(3, "outcome").as_deref(), Some("refused"));
        assert_eq!(field(3, "reason").as_deref(), Some("no"));
    }
}
