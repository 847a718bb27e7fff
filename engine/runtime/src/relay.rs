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
//!
//! # Effects handed over in memory
//!
//! Reading the log back costs a round trip, decoding, and on PostgreSQL a wait behind
//! any older commit still in flight: tens of milliseconds under load between a commit and
//! its effects on the bus. So the engine of this process also hands each commit's
//! effects to the relay as soon as it is written ([`Handoff`], through [`Handoffs`]),
//! and the relay publishes them at once ([`Relay::take`]) — the log stays the outbox:
//! the checkpoint still moves only as the relay reads the log, which it keeps doing, and
//! what was published from memory is skipped there (its positions are *claimed*), not
//! published twice. It reads the log's heads ([`EventStore::read_heads`]) and whole
//! ([`EventStore::read_at`]) only the records that may carry effects and are not claimed:
//! the contents of what went out from memory are not read back. A crash re-publishes,
//! with the same ids, what the log shows after the saved checkpoint, as before.
//!
//! Effects go out in order for each patient. A patient's commits are made one after
//! another by this process (the service never has two of one patient's commits in
//! flight) and are handed in that order. What was written for a patient by anyone else —
//! another process before it took the patient over, a migration — is in the log before
//! the engine loads the patient; the engine then raises the handoffs' *floor* to the
//! log's end, and a handoff waits until the relay's reading of the log has published
//! everything up to its floor. A commit of this process whose effects were not handed (the
//! queue was full, the relay was not the leader, a publish failed) raises the floor the
//! same way ([`Handoffs::missed`]): later handoffs wait for the log to be relayed past it.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use jiff::Timestamp;
use parcours_core::state::{EffectKind, Recorded};
use parcours_store::{EventStore, StoredRecord};
use tokio::sync::mpsc;

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
    if !may_carry_effects(&r.stream, &r.record.record_type) {
        return Ok(Vec::new());
    }
    Ok(codec::decode_instance(r)?
        .into_iter()
        .filter_map(|recorded| {
            effect(
                recorded,
                &r.record.tenant,
                &r.record.subject,
                &r.stream,
                r.position,
            )
        })
        .collect())
}

/// Whether a record of this stream and type may carry effects (the others never do).
fn may_carry_effects(stream: &str, record_type: &str) -> bool {
    codec::is_instance(stream)
        && (record_type == codec::DECISION || EFFECT_TYPES.contains(&record_type))
}

/// The effect an instance event is, if it is one (tasks, alerts, handoffs), as recorded
/// at `position` of the log in the stream `instance`, for `tenant` and `subject` (the
/// record's).
pub fn effect(
    recorded: Recorded,
    tenant: &str,
    subject: &str,
    instance: &str,
    position: u64,
) -> Option<Effect> {
    let kind = recorded.change.effect_kind()?;
    if kind == EffectKind::Timer {
        return None;
    }
    Some(Effect {
        id: recorded.id.to_string(),
        kind,
        tenant: tenant.to_string(),
        subject: subject.to_string(),
        instance: instance.to_string(),
        cause: recorded.cause.to_string(),
        rule: recorded.rule.as_deref().map(str::to_string),
        position,
        at: recorded.at,
        change: recorded.change,
    })
}

/// One commit's effects, handed by the engine that wrote it to the relay of its process.
#[derive(Debug)]
pub struct Handoff {
    /// The positions the commit's records hold: `first..=last`.
    pub first: u64,
    /// See `first`.
    pub last: u64,
    /// The log must be relayed up to here before these effects go out: the log's end when
    /// the engine last loaded a patient someone else may have written (see the module
    /// docs).
    pub floor: u64,
    /// The commit's effects, in log order, each with its record's position.
    pub effects: Vec<Effect>,
    /// When the commit was written (wall clock), for the event → effect latency.
    pub committed_at: Timestamp,
}

/// The engine's side of the hand-over: a bounded queue to the relay, and the floor of
/// what was not handed.
#[derive(Clone, Debug)]
pub struct Handoffs {
    tx: mpsc::Sender<Handoff>,
    missed: Arc<AtomicU64>,
}

/// The relay's side of the hand-over.
#[derive(Debug)]
pub struct HandoffQueue {
    rx: mpsc::Receiver<Handoff>,
    missed: Arc<AtomicU64>,
}

impl HandoffQueue {
    /// The next handoff (`None`: every engine side is gone).
    pub async fn recv(&mut self) -> Option<Handoff> {
        self.rx.recv().await
    }

    /// A handoff already waiting, if any.
    pub fn try_recv(&mut self) -> Option<Handoff> {
        self.rx.try_recv().ok()
    }

    /// Leave every handoff waiting in the queue to the log (this process stopped
    /// relaying: another one publishes them from the log).
    pub fn forget(&mut self) {
        while let Ok(h) = self.rx.try_recv() {
            left_to_log(1);
            self.missed(h.last);
        }
    }

    /// A handoff up to position `last` not published from memory: left to the log.
    pub(crate) fn missed(&self, last: u64) {
        self.missed.fetch_max(last, Ordering::SeqCst);
    }
}

/// A hand-over queue holding at most `capacity` commits: beyond it, commits are left to
/// the relay's reading of the log.
pub fn handoffs(capacity: usize) -> (Handoffs, HandoffQueue) {
    let (tx, rx) = mpsc::channel(capacity.max(1));
    let missed = Arc::new(AtomicU64::new(0));
    (
        Handoffs {
            tx,
            missed: missed.clone(),
        },
        HandoffQueue { rx, missed },
    )
}

impl Handoffs {
    /// Hand a commit's effects over (never waits: when the queue is full they are left
    /// to the log, see [`Handoffs::missed`]).
    pub fn send(&self, h: Handoff) {
        if let Err(e) = self.tx.try_send(h) {
            let h = match e {
                mpsc::error::TrySendError::Full(h) | mpsc::error::TrySendError::Closed(h) => h,
            };
            left_to_log(1);
            self.missed(h.last);
        }
    }

    /// A commit of this process up to position `last` whose effects are left to the
    /// relay's reading of the log: later handoffs wait until it has been relayed.
    pub fn missed(&self, last: u64) {
        self.missed.fetch_max(last, Ordering::SeqCst);
    }
}

/// Handoffs held back (waiting for the log to be relayed up to their floor) at most;
/// beyond, they are left to the log.
const HELD_MAX: usize = 256;

/// Effects of handoffs published in one call to the bus, at most (more when one commit
/// has more).
const PUBLISH_MAX: usize = 4096;

/// Count handoffs whose effects the log's reading publishes instead.
fn left_to_log(n: usize) {
    metrics::metrics()
        .relay_handoffs
        .with_label_values(&["log"])
        .inc_by(n as u64);
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
    /// Positions published from handoffs, above `published`: first → last.
    claimed: BTreeMap<u64, u64>,
    /// Handoffs waiting for the log to be relayed up to their floor, in order.
    held: VecDeque<Handoff>,
}

impl Progress {
    /// Whether the record at `position` was published from a handoff.
    fn is_claimed(&self, position: u64) -> bool {
        self.claimed
            .range(..=position)
            .next_back()
            .is_some_and(|(_, last)| *last >= position)
    }
}

/// Publishes the log's effects to a bus.
#[derive(Clone, Debug)]
pub struct Relay<S> {
    store: S,
    name: String,
    page: usize,
    progress: Arc<Mutex<Progress>>,
    /// Held while effects are chosen and published, by the log's reading (per page,
    /// after the read) and by the handoffs': the two may run at once (a read of the log
    /// can wait for an older commit in flight) without publishing anything twice or out
    /// of order.
    publishing: Arc<tokio::sync::Mutex<()>>,
}

impl<S: EventStore> Relay<S> {
    /// A relay keeping its checkpoint under `name` (one per bus).
    pub fn new(store: S, name: impl Into<String>) -> Relay<S> {
        Relay {
            store,
            name: name.into(),
            page: 1024,
            progress: Arc::default(),
            publishing: Arc::default(),
        }
    }

    /// Read the log `page` records at a time (1 024 by default); the checkpoint is
    /// saved at least every 16 pages under load.
    pub fn with_page(mut self, page: usize) -> Relay<S> {
        self.page = page.max(1);
        self
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
            let published = p.published;
            p.claimed.retain(|_, last| *last > published);
        }
    }

    /// Read the saved checkpoint again at the next run: another relay may have moved it
    /// (this process lost, then regained, the relay's lease).
    pub fn resume(&self) {
        if let Ok(mut p) = self.progress.lock() {
            p.loaded = false;
        }
    }

    /// This process stopped relaying: what was handed over and not published is left to
    /// the log (and to whichever process relays it), what was claimed is forgotten, and
    /// the saved checkpoint is read again at the next run.
    pub fn release(&self, queue: &mut HandoffQueue) {
        queue.forget();
        if let Ok(mut p) = self.progress.lock() {
            p.loaded = false;
            p.claimed.clear();
            let held = std::mem::take(&mut p.held);
            left_to_log(held.len());
            for h in held {
                queue.missed(h.last);
            }
        }
    }

    /// Whether handoffs wait for the log to be relayed further ([`Relay::run_once`]).
    pub fn holds_handoffs(&self) -> bool {
        self.progress.lock().is_ok_and(|p| !p.held.is_empty())
    }

    /// Publish a commit's effects handed over in memory: at once, unless the log must
    /// first be relayed up to the handoff's floor or past a commit left to the log; then
    /// it waits, and every later handoff with it, for [`Relay::run_once`] to get there
    /// (see the module docs). Returns how many effects were published.
    pub async fn take<B: Bus>(
        &self,
        bus: &B,
        h: Handoff,
        queue: &HandoffQueue,
    ) -> Result<usize, RuntimeError> {
        self.hold(h, queue);
        self.publish_handed(bus, queue).await
    }

    /// Queue a handoff behind those held, for [`Relay::publish_handed`]. Beyond
    /// `HELD_MAX` (256) held, they are all left to the log.
    pub fn hold(&self, h: Handoff, queue: &HandoffQueue) {
        let overflow = match self.progress.lock() {
            Ok(mut p) => {
                p.held.push_back(h);
                (p.held.len() > HELD_MAX).then(|| std::mem::take(&mut p.held))
            }
            Err(_) => Some(VecDeque::from([h])),
        };
        if let Some(dropped) = overflow {
            left_to_log(dropped.len());
            queue.missed(dropped.iter().map(|h| h.last).max().unwrap_or(0));
        }
    }

    /// Publish the held handoffs whose turn has come, in order, as few bus publishes
    /// as possible (the bus pipelines a publish's effects). Returns how many effects.
    pub async fn publish_handed<B: Bus>(
        &self,
        bus: &B,
        queue: &HandoffQueue,
    ) -> Result<usize, RuntimeError> {
        let _publishing = self.publishing.lock().await;
        let mut n = 0;
        loop {
            let missed = queue.missed.load(Ordering::SeqCst);
            let mut batch = Vec::new();
            let mut effects = Vec::new();
            {
                let Ok(mut p) = self.progress.lock() else {
                    return Ok(n);
                };
                let published = p.published;
                while let Some(front) = p.held.front() {
                    let done = front.last <= published;
                    let blocked = published < front.floor.max(missed) && !front.effects.is_empty();
                    if !done && (blocked || effects.len() >= PUBLISH_MAX) {
                        break;
                    }
                    let Some(mut h) = p.held.pop_front() else {
                        break;
                    };
                    if done {
                        left_to_log(1); // the log's reading published it first
                        continue;
                    }
                    let before = effects.len();
                    effects.extend(
                        std::mem::take(&mut h.effects)
                            .into_iter()
                            .filter(|e| e.position > published),
                    );
                    batch.push((h, effects.len() - before));
                }
            }
            if batch.is_empty() {
                return Ok(n);
            }
            let m = metrics::metrics();
            if !effects.is_empty() {
                let begun = crate::service::wall_instant();
                let sent = bus.publish(&effects).await;
                m.relay_publish_seconds
                    .observe(begun.elapsed().as_secs_f64());
                if let Err(e) = sent {
                    m.relay_failures.inc();
                    left_to_log(batch.len());
                    queue.missed(batch.iter().map(|(h, _)| h.last).max().unwrap_or(0));
                    return Err(e.into());
                }
                let now = metrics::wall_now();
                let mut of = effects.iter();
                for (h, k) in &batch {
                    let age = metrics::seconds_between(h.committed_at, now);
                    for e in of.by_ref().take(*k) {
                        m.event_to_effect_seconds.observe(age);
                        m.effects_published
                            .with_label_values(&[effect_label(e.kind)])
                            .inc();
                    }
                }
                n += effects.len();
            }
            m.relay_handoffs
                .with_label_values(&["published"])
                .inc_by(batch.len() as u64);
            if let Ok(mut p) = self.progress.lock() {
                for (h, _) in &batch {
                    let from = h.first.max(p.published + 1);
                    if from <= h.last {
                        p.claimed.insert(from, h.last);
                    }
                }
            }
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
            let page = self.store.read_heads(pos, 4096).await?;
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
        // Records read since the last save: counted, not measured by positions, which
        // are sparse on PostgreSQL (2^20 per transaction).
        let mut unsaved = 0;
        loop {
            // The log's heads, then whole only the records that may carry effects and
            // were not published from a handoff: most of a busy engine's are, and their
            // contents (a decision's payload above all) need not be read back. Which
            // were is settled under the publishing lock (a handoff being published
            // claims its records when done), so that no record is read twice.
            let heads = match self.store.read_heads(after, self.page).await {
                Ok(h) => h,
                Err(e) => {
                    self.failed(saved, after).await;
                    return Err(e.into());
                }
            };
            let Some(last) = heads.last() else { break };
            let last = last.position;
            let _publishing = self.publishing.lock().await;
            let m = metrics::metrics();
            let wanted: Vec<u64> = {
                let claimed = self.progress.lock().ok();
                heads
                    .iter()
                    .filter(|h| may_carry_effects(&h.stream, &h.record_type))
                    .filter(|h| !claimed.as_ref().is_some_and(|p| p.is_claimed(h.position)))
                    .map(|h| h.position)
                    .collect()
            };
            let page = if wanted.is_empty() {
                Vec::new()
            } else {
                match self.store.read_at(&wanted).await {
                    Ok(p) => p,
                    Err(e) => {
                        self.failed(saved, after).await;
                        return Err(e.into());
                    }
                }
            };
            let now = metrics::wall_now();
            m.outbox_lag_seconds
                .set(metrics::seconds_between(heads[0].recorded_at, now));
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
                self.failed(saved, after).await;
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
            unsaved += heads.len();
            self.published(after);
            if published > 0 && unsaved >= 16 * self.page {
                self.flush().await?;
                saved = after;
                unsaved = 0;
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

    /// A round failed: count it, and save the progress made before the failure (best
    /// effort: the next run re-publishes).
    async fn failed(&self, saved: u64, after: u64) {
        metrics::metrics().relay_failures.inc();
        if after != saved {
            self.published(after);
            let _ = self.flush().await;
        }
    }
}
