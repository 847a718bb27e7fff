//! Tokens at intake: a [`Handle`] whose submissions have their identifying fields
//! replaced by tokens before they go on (to this process's engine, or forwarded to the
//! owners over NATS). The core, the log, snapshots and effects only ever see tokens.

use std::sync::Arc;

use parcours_core::events::Event;
use parcours_runtime::{Forward, Forwarded, Handle, SubmitError};
use parcours_store::PatientKeys;

use crate::provider::KeyProvider;
use crate::vault::Vault;

/// The [`Forward`] behind [`protecting`].
struct Protecting<P, S> {
    vault: Vault<P, S>,
    next: Handle,
}

impl<P, S> std::fmt::Debug for Protecting<P, S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Protecting")
            .field("next", &self.next)
            .finish()
    }
}

impl<P, S> Forward for Protecting<P, S>
where
    P: KeyProvider,
    S: PatientKeys + Clone + 'static,
{
    fn forward(&self, mut events: Vec<Event>) -> Forwarded<'_> {
        Box::pin(async move {
            self.vault
                .protect(&mut events)
                .await
                .map_err(|e| SubmitError::Unavailable(format!("vault: {e}")))?;
            self.next.submit(events).await
        })
    }
}

/// A handle that tokenizes identifying fields, then submits through `next`.
pub fn protecting<P, S>(vault: Vault<P, S>, next: Handle) -> Handle
where
    P: KeyProvider,
    S: PatientKeys + Clone + 'static,
{
    next.forwarding(Arc::new(Protecting {
        vault,
        next: next.clone(),
    }))
}
