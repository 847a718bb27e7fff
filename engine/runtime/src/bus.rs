//! The bus port: where effects go after commit. NATS JetStream implements it in
//! production; [`InProcessBus`] in embedded mode.

use std::future::Future;
use std::sync::{Arc, Mutex};

use parcours_core::state::{Change, EffectKind};
use serde::Serialize;
use tokio::sync::mpsc;

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
    /// The log position (increasing for each patient: consumers can order a patient's
    /// effects and de-duplicate by it).
    pub position: u64,
    /// Clinical time it took effect.
    pub at: jiff::Timestamp,
    /// What happened.
    pub change: Change,
}

/// Why a publish failed.
#[derive(Debug, thiserror::Error)]
#[error("bus: {0}")]
pub struct BusError(pub String);

/// Where effects are published. Delivery is at least once, in log order for each patient; consumers
/// de-duplicate by effect id.
pub trait Bus: Send + Sync {
    /// Publish effects in order; returns once the bus holds every one of them (a bus may
    /// pipeline them: only the whole batch is acknowledged).
    fn publish(&self, effects: &[Effect]) -> impl Future<Output = Result<(), BusError>> + Send;
}

/// The embedded bus: every subscriber receives every effect, in order for each patient, through a
/// bounded queue. A full queue holds the relay back (nothing is dropped; the log keeps
/// the effects meanwhile); a dropped subscriber is forgotten.
#[derive(Clone, Debug)]
pub struct InProcessBus {
    subscribers: Arc<Mutex<Vec<mpsc::Sender<Effect>>>>,
    capacity: usize,
}

impl InProcessBus {
    /// A bus whose subscribers each buffer up to `capacity` effects.
    pub fn new(capacity: usize) -> InProcessBus {
        InProcessBus {
            subscribers: Arc::default(),
            capacity: capacity.max(1),
        }
    }

    /// A new subscriber, receiving effects published from now on.
    pub fn subscribe(&self) -> mpsc::Receiver<Effect> {
        let (tx, rx) = mpsc::channel(self.capacity);
        if let Ok(mut subs) = self.subscribers.lock() {
            subs.push(tx);
        }
        rx
    }

    fn senders(&self) -> Vec<mpsc::Sender<Effect>> {
        match self.subscribers.lock() {
            Ok(mut subs) => {
                subs.retain(|s| !s.is_closed());
                subs.clone()
            }
            Err(_) => Vec::new(),
        }
    }
}

impl Bus for InProcessBus {
    async fn publish(&self, effects: &[Effect]) -> Result<(), BusError> {
        // No subscriber is not an error: the log keeps everything.
        for tx in self.senders() {
            for e in effects {
                if tx.send(e.clone()).await.is_err() {
                    break; // this subscriber went away
                }
            }
        }
        Ok(())
    }
}
