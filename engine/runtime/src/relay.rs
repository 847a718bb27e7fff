//! The outbox relay: the log is the outbox. Effect records after the relay's checkpoint
//! are published in log order, then the checkpoint moves. A crash between publish and
//! checkpoint publishes the same effects again, with the same ids.
//!
//! The relay keeps how far it has published in memory and saves its checkpoint at most
//! every [`SAVE_EVERY`] under load (or every 16 pages), when it finds nothing new, and
//! on [`Relay::flush`]: saving after every commit would double the log's write
//! transactions (and, on SQLite, its fsyncs). A crash re-publishes at most what was
//! published since the last save, with the same ids. It reads the saved checkpoint
//! once, then after [`Relay::resume`] (the service calls it while another process holds
//! the relay's lease, which moves the checkpoint meanwhile), not at every round.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use parcours_core::state::EffectKind;
use parcours_store::{EventStore, StoredRecord};

use crate::bus::{Bus, Effect};
use crate::codec::{self, DecodeError};
use crate::engine::RuntimeError;
use crate::metrics;

/// The `kind` label of an effect.
fn effect_label(kind: EffectKind) -> &'static str {
    match kind {
        EffectKind::Task => "task",
        EffectKind::Alert => "alert",
        EffectKind::Handoff => "handoff",
        EffectKind::Timer => "timer",
    }
}

/// Record types of the first layout (one record per instance event) that are effects.
const EFFECT_TYPES: &[&str] = &[
    "task.requested",
    "task.reminded",
    "task.overdue",
    "task.escalated",
    "task.closed",
    "alert.raised",
    "alert.escalated",
    "alert.closed",
    "handoff.requested",
    "handoff.escalated",
    "handoff.closed",
];

/// The effects a stored record carries, in order (tasks, alerts, handoffs; timers are
/// the engine's own business). Every effect of a decision shares the record's position.
pub fn effects_of(r: &StoredRecord) -> Result<Vec<Effect>, DecodeError> {
    let t = r.record.record_type.as_str();
    if !codec::is_instance(&r.stream) || (t != codec::DECISION && !EFFECT_TYPES.contains(&t)) {
        return Ok(Vec::new());
    }
    let mut out = Vec::new();
    for recorded in codec::decode_instance(r)? {
        let Some(kind) = recorded.change.effect_kind() else {
            continue;
        };
        if kind == EffectKind::Timer {
            continue;
        }
        out.push(Effect {
            id: recorded.id.to_string(),
            kind,
            tenant: r.record.tenant.clone(),
            subject: r.record.subject.clone(),
            instance: r.stream.clone(),
            cause: recorded.cause.to_string(),
            rule: recorded.rule.as_deref().map(str::to_string),
            position: r.position,
            at: recorded.at,
            change: recorded.change,
        });
    }
    Ok(out)
}

/// Under load, the relay's checkpoint is saved at most this often.
pub const SAVE_EVERY: Duration = Duration::from_millis(250);

/// How far a relay got: published (in memory) and saved (in the log).
#[derive(Debug, Default)]
struct Progress {
    published: u64,
    saved: u64,
    saved_at: Option<Instant>,
    /// The saved checkpoint was read since this relay last (re)gained the bus: while it
    /// relays alone, its memory is ahead of or equal to the log's, which need not be
    /// read again each round.
    loaded: bool,
}

/// Publishes the log's effects to a bus.
#[derive(Clone, Debug)]
pub struct Relay<S> {
    store: S,
    name: String,
    page: usize,
    progress: Arc<Mutex<Progress>>,
}

impl<S: EventStore> Relay<S> {
    /// A relay keeping its checkpoint under `name` (one per bus).
    pub fn new(store: S, name: impl Into<String>) -> Relay<S> {
        Relay {
            store,
            name: name.into(),
            page: 1024,
            progress: Arc::default(),
        }
    }

    fn progress(&self) -> (u64, u64, Option<Instant>) {
        self.progress
            .lock()
            .map(|p| (p.published, p.saved, p.saved_at))
            .unwrap_or_default()
    }

    fn published(&self, position: u64) {
        if let Ok(mut p) = self.progress.lock() {
            p.published = p.published.max(position);
        }
    }

    /// Read the saved checkpoint again at the next run: another relay may have moved it
    /// (this process lost, then regained, the relay's lease).
    pub fn resume(&self) {
        if let Ok(mut p) = self.progress.lock() {
            p.loaded = false;
        }
    }

    /// Whether effects were published past the saved checkpoint.
    pub fn unsaved(&self) -> bool {
        let (published, saved, _) = self.progress();
        published > saved
    }

    /// Save the checkpoint up to what was published, if it is behind.
    pub async fn flush(&self) -> Result<(), RuntimeError> {
        let (published, saved, _) = self.progress();
        if published > saved {
            self.store.save_checkpoint(&self.name, published).await?;
            // Pacing of the checkpoint's writes: wall-clock time, never clinical time.
            #[allow(clippy::disallowed_methods)]
            let now = Instant::now();
            if let Ok(mut p) = self.progress.lock() {
                p.saved = p.saved.max(published);
                p.saved_at = Some(now);
            }
        }
        Ok(())
    }

    /// Records between the checkpoint and the end of the log (what is left to relay).
    pub async fn lag(&self) -> Result<u64, RuntimeError> {
        let stored = self.store.checkpoint(&self.name).await?.unwrap_or(0);
        let (published, _, _) = self.progress();
        let after = stored.max(published);
        let mut n = 0u64;
        let mut pos = after;
        loop {
            let page = self.store.read_all(pos, 4096).await?;
            let Some(last) = page.last() else { break };
            pos = last.position;
            n += page.len() as u64;
        }
        Ok(n)
    }

    /// Publish every effect recorded after the checkpoint, in log order, and move the
    /// checkpoint past what the bus acknowledged (in memory; saved every 16 pages, at
    /// most every [`SAVE_EVERY`] otherwise, and when nothing new is left: a crash
    /// re-publishes at most that, with the same ids). Returns how many were published.
    pub async fn run_once<B: Bus>(&self, bus: &B) -> Result<usize, RuntimeError> {
        let loaded = self.progress.lock().is_ok_and(|p| p.loaded);
        if !loaded {
            let stored = self.store.checkpoint(&self.name).await?.unwrap_or(0);
            if let Ok(mut p) = self.progress.lock() {
                p.saved = p.saved.max(stored);
                p.published = p.published.max(stored);
                p.loaded = true;
            }
        }
        let (start, stored, _) = self.progress();
        let mut after = start;
        let mut saved = stored;
        let mut published = 0;
        loop {
            let page = match self.store.read_all(after, self.page).await {
                Ok(p) => p,
                Err(e) => {
                    metrics::metrics().relay_failures.inc();
                    self.save(saved, after).await;
                    return Err(e.into());
                }
            };
            let Some(last) = page.last() else { break };
            let last = last.position;
            let m = metrics::metrics();
            let now = metrics::wall_now();
            m.outbox_lag_seconds
                .set(metrics::seconds_between(page[0].recorded_at, now));
            let mut effects = Vec::new();
            let mut ages = Vec::new();
            for r in &page {
                let of = effects_of(r)?;
                ages.extend(
                    of.iter()
                        .map(|e| (e.kind, metrics::seconds_between(r.recorded_at, now))),
                );
                effects.extend(of);
            }
            if !effects.is_empty()
                && let Err(e) = bus.publish(&effects).await
            {
                m.relay_failures.inc();
                self.save(saved, after).await;
                return Err(e.into());
            }
            for (kind, age) in ages {
                m.event_to_effect_seconds.observe(age);
                m.effects_published
                    .with_label_values(&[effect_label(kind)])
                    .inc();
            }
            published += effects.len();
            after = last;
            self.published(after);
            if published > 0 && after - saved >= 16 * self.page as u64 {
                self.flush().await?;
                saved = after;
            }
        }
        let (_, _, saved_at) = self.progress();
        let idle = after == start;
        if idle || saved_at.is_none_or(|t| t.elapsed() >= SAVE_EVERY) {
            self.flush().await?;
        }
        metrics::metrics().outbox_lag_seconds.set(0.0);
        Ok(published)
    }

    /// Save progress made before a failure (best effort: the next run re-publishes).
    async fn save(&self, saved: u64, after: u64) {
        if after != saved {
            self.published(after);
            let _ = self.flush().await;
        }
    }
}
