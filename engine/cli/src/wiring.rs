//! Adapters plugged into the running engine: the HL7 v2 MLLP listener's sink and
//! dead-letter store.

use parcours_core::events::Event;
use parcours_hl7v2::mllp::{DeadLetter, DeadLetterError, DeadLetters, Sink, SinkError};
use parcours_runtime::{Handle, SubmitError};
use parcours_store::EventStore;

/// The engine as the MLLP listener's sink: `Ok` once the events are committed.
#[derive(Clone, Debug)]
pub(crate) struct EngineSink(pub(crate) Handle);

impl Sink for EngineSink {
    async fn submit(&self, events: Vec<Event>) -> Result<Vec<String>, SinkError> {
        let submitted = parcours_runtime::metrics::submit(
            &self.0,
            parcours_runtime::metrics::Source::Mllp,
            events,
        );
        match submitted.await {
            Ok(results) => {
                let queued = results
                    .iter()
                    .any(|r| matches!(r, Ok(parcours_runtime::IngestOutcome::Queued)));
                let mut warnings: Vec<String> = Vec::new();
                for w in results.iter().flat_map(|r| match r {
                    Ok(
                        parcours_runtime::IngestOutcome::Committed { warnings, .. }
                        | parcours_runtime::IngestOutcome::CommittedByOwner { warnings },
                    ) => warnings.as_slice(),
                    _ => &[],
                }) {
                    if !warnings.contains(w) {
                        warnings.push(w.clone());
                    }
                }
                let mut refused: Vec<String> = Vec::new();
                for reason in results
                    .into_iter()
                    .filter_map(|r| r.err().map(|e| e.to_string()))
                {
                    // One reason once (a refused identity link refuses each of the
                    // message's events for it).
                    if !refused.contains(&reason) {
                        refused.push(reason);
                    }
                }
                if refused.is_empty() && queued {
                    // AA means committed: the sender resends, and the resend is
                    // recognised once the owner has committed it.
                    Err(SinkError::Unavailable {
                        reason: "accepted but not committed yet; send again".into(),
                    })
                } else if refused.is_empty() {
                    Ok(warnings)
                } else {
                    Err(SinkError::Rejected {
                        reason: refused.join("; "),
                    })
                }
            }
            Err(SubmitError::ShuttingDown) => Err(SinkError::Unavailable {
                reason: "the engine is shutting down".into(),
            }),
            Err(SubmitError::Unavailable(reason)) => Err(SinkError::Unavailable { reason }),
        }
    }
}

/// Refused HL7 messages go to the log's dead-letter table.
#[derive(Clone, Debug)]
pub(crate) struct StoreDeadLetters<S> {
    pub(crate) store: S,
    pub(crate) tenant: String,
}

impl<S: EventStore + 'static> DeadLetters for StoreDeadLetters<S> {
    async fn keep(&self, letter: DeadLetter) -> Result<(), DeadLetterError> {
        let reason = match (&letter.message_type, &letter.control_id) {
            (Some(t), Some(c)) => format!("{t} {c}: {} (answered {:?})", letter.reason, letter.ack),
            _ => format!("{} (answered {:?})", letter.reason, letter.ack),
        };
        parcours_runtime::metrics::dead_letter("mllp");
        self.store
            .dead_letter(parcours_store::DeadLetter {
                source: "mllp".into(),
                tenant: Some(self.tenant.clone()),
                reason,
                payload: letter.raw.to_vec(),
            })
            .await
            .map(|_| ())
            .map_err(|e| DeadLetterError {
                reason: e.to_string(),
            })
    }
}
