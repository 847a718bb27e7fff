//! The bus port: where effects go after commit. NATS JetStream implements it in
//! production; [`InProcessBus`] in embedded mode.

use std::future::Future;

use parcours_core::state::{Change, EffectKind};
use serde::Serialize;
use tokio::sync::broadcast;

/// One effect, as published: the recorded change and where it comes from. Carries the
/// pseudonymous subject, never a patient identity.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Effect {
    /// The effect id (stable across retries and restarts: the record id).
    pub id: String,
    /// Task, alert or handoff.
    pub kind: EffectKind,
    /// The CPTS.
    pub tenant: String,
    /// Pseudonymous patient key.
    pub subject: String,
    /// The instance (stream) it belongs to.
    pub instance: String,
    /// The inbound event that caused it.
    pub cause: String,
    /// The pathway rule that caused it.
    pub rule: Option<String>,
    /// The log position (increasing: consumers can order and de-duplicate by it).
    pub position: u64,
    /// What happened.
    pub change: Change,
}

/// Why a publish failed.
#[derive(Debug, thiserror::Error)]
#[error("bus: {0}")]
pub struct BusError(pub String);

/// Where effects are published. Delivery is at least once, in log order; consumers
/// de-duplicate by effect id.
pub trait Bus: Send + Sync {
    /// Publish one effect; returns once the bus has it.
    fn publish(&self, effect: &Effect) -> impl Future<Output = Result<(), BusError>> + Send;
}

/// The embedded bus: subscribers in the same process receive every effect, in order.
#[derive(Clone, Debug)]
pub struct InProcessBus {
    tx: broadcast::Sender<Effect>,
}

impl InProcessBus {
    /// A bus keeping up to `capacity` effects for slow subscribers (a subscriber that
    /// falls further behind is told how many it missed).
    pub fn new(capacity: usize) -> InProcessBus {
        let (tx, _) = broadcast::channel(capacity.max(1));
        InProcessBus { tx }
    }

    /// A new subscriber, receiving effects published from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Effect> {
        self.tx.subscribe()
    }
}

impl Bus for InProcessBus {
    async fn publish(&self, effect: &Effect) -> Result<(), BusError> {
        // No subscriber is not an error: the log keeps everything.
        let _ = self.tx.send(effect.clone());
        Ok(())
    }
}
