//! The running engine: one task owns the [`Engine`] and takes work from a bounded queue;
//! a timer loop lives in the same task (timers and inbound events go through one writer);
//! a relay task publishes effects after each commit — handed over in memory by the
//! commit's writer, and read back from the log (see [`crate::relay`]).
//!
//! Callers hold a [`Handle`]: [`Handle::submit`] returns once the events are committed
//! (or refused, or known duplicates) — what the HTTP API, the MLLP listener and the NATS
//! consumer wait for before they acknowledge anything. Submissions that arrive while a
//! commit is in flight are gathered into the next one (group commit), with those the
//! callers just answered send within a few polls (`gather`): many callers, few
//! transactions.
//!
//! Shutdown: cancel the token. The queue stops taking work, what it holds is processed,
//! the relay publishes what is committed, and the tasks end.

use std::collections::HashSet;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use futures::StreamExt as _;
use futures::stream::FuturesUnordered;
use jiff::Timestamp;
use parcours_core::events::Event;
use parcours_store::{EventStore, TimerScope};
use tokio::sync::{Notify, mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument as _;

use crate::bus::Bus;
use crate::engine::{Engine, IngestOutcome, Prepared, Refused, RuntimeError, write_commit};
use crate::relay::{self, HandoffQueue, Handoffs, Relay};

/// Where "now" comes from: the wall clock in a service, a virtual one in tests and demos.
pub trait Clock: Send + Sync + 'static {
    /// The current instant.
    fn now(&self) -> Timestamp;
}

/// The machine's clock.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Timestamp {
        // The runtime (not the core) reads the wall clock: to know which timers are due.
        #[allow(clippy::disallowed_methods)]
        Timestamp::now()
    }
}

/// Tuning of the service.
#[derive(Clone, Debug)]
pub struct ServiceConfig {
    /// Submissions waiting for the engine before callers are held back.
    pub queue: usize,
    /// Events committed together at most.
    pub max_batch: usize,
    /// Name of the relay's checkpoint.
    pub relay_name: String,
    /// Scale-out: the timers this process fires, following the partitions it owns
    /// (`None`: every timer, one engine).
    pub timer_scope: Option<watch::Receiver<TimerScope>>,
    /// Scale-out: whether this process is the one relaying effects now (`None`: it
    /// always is). One relay at a time keeps effects in log order on the bus.
    pub relay_leader: Option<watch::Receiver<bool>>,
    /// Group commits in flight at once, at most (at least 1, at most the store's
    /// `concurrent_appends`: 2 on SQLite, one written while the next waits for its single
    /// writer). Each next group is decided while the earlier ones commit, when it shares no
    /// patient with them. More than the store's `steady_appends` (1 on SQLite, 2 on
    /// PostgreSQL) are in flight only while submissions queue up or the groups in flight
    /// are large (a backlog): at a steady rate, fewer and larger groups cost the log less.
    /// Default 4.
    pub commits_in_flight: usize,
}

impl Default for ServiceConfig {
    fn default() -> ServiceConfig {
        ServiceConfig {
            queue: 4096,
            max_batch: 1024,
            relay_name: "relay".into(),
            timer_scope: None,
            relay_leader: None,
            commits_in_flight: 4,
        }
    }
}

/// Why a submission was not processed. Nothing of it was committed; it may be retried.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SubmitError {
    /// The service is shutting down or stopped.
    #[error("the engine is shutting down")]
    ShuttingDown,
    /// The store failed; the submission can be retried later.
    #[error("the engine could not commit: {0}")]
    Unavailable(String),
}

/// What one submitted event became.
pub type EventResult = Result<IngestOutcome, Refused>;

struct Submission {
    events: Vec<Event>,
    reply: Reply,
}

/// Where a submission's answer goes.
type Reply = oneshot::Sender<Result<Vec<EventResult>, SubmitError>>;

/// Live health, for `/readyz` and metrics.
#[derive(Debug, Default)]
pub struct Health {
    /// The last commit failed (the store is unreachable or refusing).
    pub store_failing: AtomicBool,
    /// Shutdown has begun.
    pub stopping: AtomicBool,
    /// The last relay run failed (the bus is unreachable).
    pub bus_failing: AtomicBool,
    /// Scale-out: this process cannot take its share of the work (the leases' database
    /// or the inbound stream is unreachable).
    pub intake_failing: AtomicBool,
    /// Production: the connection to the bus (NATS) is down; the client reconnects.
    pub bus_disconnected: AtomicBool,
    /// Effects published so far.
    pub published: AtomicU64,
    /// Timers fired so far.
    pub timers_fired: AtomicU64,
    /// Inbound events committed so far.
    pub committed: AtomicU64,
    /// Wakes every waiter each time this process commits (inbound events or fired
    /// timers): readers of the log waiting for news (the HTTP effects feed's `wait`).
    /// Commits of other processes are not seen.
    pub log_grew: Notify,
    /// A pathway version was published through this process (its HTTP API): the engine
    /// loads the log's new versions at its next turn instead of within
    /// [`crate::PUBLISHED_CHECK_EVERY`].
    pub versions_published: AtomicBool,
}

impl Health {
    /// Whether the service takes and commits work.
    pub fn ready(&self) -> bool {
        !self.store_failing.load(Ordering::Relaxed)
            && !self.stopping.load(Ordering::Relaxed)
            && !self.intake_failing.load(Ordering::Relaxed)
            && !self.bus_disconnected.load(Ordering::Relaxed)
    }
}

/// Future of a [`Forward`].
pub type Forwarded<'a> =
    Pin<Box<dyn Future<Output = Result<Vec<EventResult>, SubmitError>> + Send + 'a>>;

/// Scale-out: how a front (HTTP, MLLP) of one process hands events to the engines that
/// own their patients (in production, the inbound NATS stream). Results are
/// [`IngestOutcome::CommittedByOwner`], [`IngestOutcome::Duplicate`] or
/// [`IngestOutcome::Queued`].
pub trait Forward: Send + Sync + std::fmt::Debug + 'static {
    /// Hand the events over; returns once each is durably on its way, and waits a
    /// bounded time for their commit.
    fn forward(&self, events: Vec<Event>) -> Forwarded<'_>;
}

/// A cheap, cloneable handle on a running service.
#[derive(Clone, Debug)]
pub struct Handle {
    intake: Intake,
    health: Arc<Health>,
    wake: Arc<Notify>,
}

#[derive(Clone, Debug)]
enum Intake {
    /// This process's engine.
    Local(mpsc::Sender<Submission>),
    /// The owners of the events' partitions.
    Forward(Arc<dyn Forward>),
}

impl Handle {
    /// Submit events; returns once each is committed, a known duplicate, or refused
    /// (or, through a forwarding handle, queued for its owner).
    pub async fn submit(&self, events: Vec<Event>) -> Result<Vec<EventResult>, SubmitError> {
        if events.is_empty() {
            return Ok(Vec::new());
        }
        match &self.intake {
            Intake::Local(tx) => {
                let (reply, rx) = oneshot::channel();
                tx.send(Submission { events, reply })
                    .await
                    .map_err(|_| SubmitError::ShuttingDown)?;
                rx.await.map_err(|_| SubmitError::ShuttingDown)?
            }
            Intake::Forward(f) => {
                if self.health.stopping.load(Ordering::Relaxed) {
                    return Err(SubmitError::ShuttingDown);
                }
                f.forward(events).await
            }
        }
    }

    /// A handle on the same service whose submissions go through `forward` (to the
    /// engines owning the events' patients) instead of this process's engine. Health
    /// stays this service's.
    pub fn forwarding(&self, forward: Arc<dyn Forward>) -> Handle {
        Handle {
            intake: Intake::Forward(forward),
            health: self.health.clone(),
            wake: self.wake.clone(),
        }
    }

    /// The service's health.
    pub fn health(&self) -> &Arc<Health> {
        &self.health
    }

    /// Ask the engine to look at its timers now (after a virtual clock moved).
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// Tell the engine that a pathway version was just published into its log: it
    /// loads the new versions at once (other processes' engines within
    /// [`crate::PUBLISHED_CHECK_EVERY`]).
    pub fn versions_published(&self) {
        self.health
            .versions_published
            .store(true, Ordering::Relaxed);
        self.wake.notify_one();
    }
}

/// Start the engine task and the relay task on `tracker`; they stop when `token` is
/// cancelled, after finishing what was queued and publishing what was committed.
pub fn start<S, B, C>(
    engine: Engine<S>,
    bus: B,
    clock: C,
    config: ServiceConfig,
    token: CancellationToken,
    tracker: &TaskTracker,
) -> Handle
where
    S: EventStore + Clone + 'static,
    B: Bus + 'static,
    C: Clock,
{
    let (tx, rx) = mpsc::channel(config.queue.max(1));
    let health = Arc::new(Health::default());
    let committed = Arc::new(Notify::new());
    let relay = Relay::new(engine.store().clone(), config.relay_name.clone());
    let (handoffs, queue) = relay::handoffs(HANDOFF_QUEUE);
    let leader = config.relay_leader.clone();
    let engine_done = CancellationToken::new();
    let wake = Arc::new(Notify::new());
    tracker.spawn(run_engine(
        engine,
        rx,
        clock,
        config,
        Signals {
            token: token.clone(),
            health: health.clone(),
            committed: committed.clone(),
            wake: wake.clone(),
            done: engine_done.clone(),
            handoffs,
        },
    ));
    tracker.spawn(run_relay(
        relay,
        bus,
        queue,
        health.clone(),
        committed,
        engine_done,
        leader,
    ));
    Handle {
        intake: Intake::Local(tx),
        health,
        wake,
    }
}

/// What the engine task shares with the rest.
struct Signals {
    token: CancellationToken,
    health: Arc<Health>,
    committed: Arc<Notify>,
    wake: Arc<Notify>,
    done: CancellationToken,
    /// Where the engine hands its commits' effects to the relay.
    handoffs: Handoffs,
}

async fn run_engine<S: EventStore + Clone + 'static, C: Clock>(
    mut engine: Engine<S>,
    mut rx: mpsc::Receiver<Submission>,
    clock: C,
    config: ServiceConfig,
    signals: Signals,
) {
    let Signals {
        token,
        health,
        committed,
        wake,
        done,
        handoffs,
    } = signals;
    if let Err(e) = engine.hand_effects_to(handoffs).await {
        // Effects then reach the bus through the log alone, a little later.
        tracing::warn!(error = %e, "effects will be relayed from the log only");
    }
    let mut scope = config.timer_scope.clone();
    if let Some(scope) = &mut scope {
        engine.set_timer_scope(scope.borrow_and_update().clone());
    }
    let in_flight = config
        .commits_in_flight
        .min(engine.store().concurrent_appends());
    let steady = engine.store().steady_appends();
    let mut pipe = Pipeline::new(in_flight, steady, &health, &committed);
    let mut next_timer = engine.next_timer().await.ok().flatten();
    // When the next timer was last looked up (`None`: look now).
    let mut timer_read: Option<std::time::Instant> = Some(wall_instant());
    let mut backoff = Duration::from_millis(50);
    loop {
        let wait = match next_timer {
            Some(t) => {
                let now = clock.now();
                let d = t.duration_since(now);
                Duration::try_from(d)
                    .unwrap_or(Duration::ZERO)
                    .min(IDLE_WAKE)
            }
            None => IDLE_WAKE,
        };
        tokio::select! {
            biased;
            _ = token.cancelled() => break,
            Some(written) = pipe.inflight.next(), if !pipe.inflight.is_empty() => {
                pipe.conclude(&mut engine, written).await;
            }
            Ok(()) = async {
                match &mut scope {
                    Some(s) => s.changed().await,
                    None => std::future::pending().await,
                }
            } => {
                if let Some(s) = &mut scope {
                    let owned = s.borrow_and_update().clone();
                    tracing::info!(scope = ?owned, "timer scope changed");
                    engine.set_timer_scope(owned);
                    timer_read = None;
                }
            }
            // With every commit slot taken, submissions wait in the queue and join the
            // next group (group commit), as do those about to be sent (`gather`). Slots
            // beyond the store's steady ones open only while submissions queue up (see
            // `room`).
            first = rx.recv(), if pipe.has_room(rx.len()) => {
                let Some(first) = first else { break };
                let batch = gather(first, &mut rx, config.max_batch).await;
                pipe.start(&mut engine, batch).await;
            }
            _ = async {
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = wake.notified() => {}
                }
            } => {
                // Timers fire with no commit in flight: their patients may be anyone's.
                // Round after round while more are due (a backlog after an outage), but
                // a waiting submission, shutdown or a new timer scope (partitions taken
                // or lost) ends the turn after the round: they go first, and the next
                // timer read below, due at once, brings the next turn.
                pipe.drain(&mut engine).await;
                let now = clock.now();
                let rounds = async {
                    let mut fired = 0;
                    while let Some(n) = engine.fire_due(now).await? {
                        fired += n;
                        health.timers_fired.fetch_add(n as u64, Ordering::Relaxed);
                        let rescoped = scope
                            .as_ref()
                            .is_some_and(|s| s.has_changed().unwrap_or(false));
                        if token.is_cancelled() || !rx.is_empty() || rescoped {
                            break;
                        }
                    }
                    Ok::<usize, RuntimeError>(fired)
                };
                match rounds.await {
                    Ok(fired) => {
                        health.store_failing.store(false, Ordering::Relaxed);
                        backoff = Duration::from_millis(50);
                        if fired > 0 {
                            committed.notify_one();
                            health.log_grew.notify_waiters();
                        }
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "firing due timers failed; retrying");
                        health.store_failing.store(true, Ordering::Relaxed);
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(Duration::from_secs(5));
                    }
                }
                timer_read = None;
            }
        }
        // A commit may have scheduled an earlier timer: the engine says which, without a
        // round trip. The store is asked at most every `TIMER_READ_EVERY` (and after
        // timers fired, or the scope changed), for what this engine's commits do not
        // show: timers removed, scheduled by another process (a migration).
        if let Some(t) = engine.take_scheduled_timer() {
            next_timer = Some(next_timer.map_or(t, |n| n.min(t)));
        }
        if timer_read.is_none_or(|t| t.elapsed() >= TIMER_READ_EVERY)
            && let Ok(t) = engine.next_timer().await
        {
            next_timer = t;
            timer_read = Some(wall_instant());
        }
        // Versions published through this process's API at once; others' (and those
        // of `parcours publish`) every few seconds, even while no event comes.
        let loaded = if health.versions_published.swap(false, Ordering::Relaxed) {
            engine.load_published_versions().await
        } else {
            engine.load_published_versions_if_due().await
        };
        if let Err(e) = loaded {
            tracing::warn!(error = %e, "reading the published pathway versions failed; trying again later");
        }
    }
    // Stop intake, then finish what was already queued.
    health.stopping.store(true, Ordering::Relaxed);
    rx.close();
    let mut rest = Vec::new();
    while let Some(s) = rx.recv().await {
        rest.push(s);
    }
    if !rest.is_empty() {
        pipe.start(&mut engine, rest).await;
    }
    pipe.drain(&mut engine).await;
    done.cancel();
}

/// The longest the engine task sleeps with nothing to do: it then looks for due timers
/// and for pathway versions published elsewhere
/// ([`crate::PUBLISHED_CHECK_EVERY`]).
const IDLE_WAKE: Duration = crate::engine::PUBLISHED_CHECK_EVERY;

/// Yields to the runtime at most this many times while gathering a group.
const GATHER_YIELDS: usize = 8;

/// A group: `first`, what else is queued, and what tasks the runtime has ready are about
/// to submit. The engine task yields once after draining the queue, and again while a
/// yield brought more (at most [`GATHER_YIELDS`] times, `max_batch` events). Clients
/// that the last commit answered wake together and resubmit within a few polls: taken
/// into this group, they make one commit where they made two (`loadgen ingest`, 64
/// clients × 1 event: 40 % fewer transactions, benches/README.md). With nothing else
/// ready, it costs one yield.
async fn gather(
    first: Submission,
    rx: &mut mpsc::Receiver<Submission>,
    max_batch: usize,
) -> Vec<Submission> {
    let mut n = first.events.len();
    let mut batch = vec![first];
    let mut yields = 0;
    loop {
        let before = batch.len();
        while n < max_batch {
            match rx.try_recv() {
                Ok(s) => {
                    n += s.events.len();
                    batch.push(s);
                }
                Err(_) => break,
            }
        }
        let quiet = yields > 0 && batch.len() == before;
        if n >= max_batch || quiet || yields == GATHER_YIELDS {
            return batch;
        }
        tokio::task::yield_now().await;
        yields += 1;
    }
}

/// The wall clock's monotonic instant: pacing of look-ups, never clinical time.
pub(crate) fn wall_instant() -> std::time::Instant {
    #[allow(clippy::disallowed_methods)]
    std::time::Instant::now()
}

/// Submissions waiting beyond which more than the store's steady commits
/// ([`EventStore::steady_appends`]) may be in flight (up to `commits_in_flight`): a
/// backlog (a burst, a NATS consumer catching up, many HTTP clients at once) is written
/// by more commits at once. Below it, each commit costing the log a transaction and a
/// sync whatever its size, fewer and larger groups cost less.
const BACKLOG: usize = 16;

/// Events a group commit in flight holds, on average, beyond which the next group is
/// decided while they are written even past the store's steady commits: the time saved
/// deciding meanwhile outweighs the next commit's own sync. A backlog of large
/// submissions (20 events each) or of many clients makes such groups without many
/// submissions queued: on SQLite, `loadgen ingest` with 1 024 clients went from
/// 16 571–18 693 to 23 043 events/s, with 256 clients (groups below it) unchanged
/// (benches/README.md, "A second commit in flight on SQLite, for large groups").
const LARGE_GROUPS: usize = 256;

/// Whether a new group may start with `inflight` commits in flight holding `events`
/// events (at most `max` commits, of which `steady` without a backlog) and `waiting`
/// submissions in the queue.
fn room(inflight: usize, max: usize, steady: usize, waiting: usize, events: usize) -> bool {
    inflight < max
        && (inflight < steady.max(1)
            || waiting >= BACKLOG
            || events >= LARGE_GROUPS.saturating_mul(inflight))
}

/// The engine's next timer is looked up in the store at most this often (each commit's
/// own timers lower it at once: [`Engine::take_scheduled_timer`]).
const TIMER_READ_EVERY: Duration = Duration::from_millis(100);

type PatientKey = (String, String);

/// One group commit: the submissions it answers, their events, its spans.
struct Group {
    /// Each submission's count of events (its share of `events`, in order) and where
    /// its answer goes.
    replies: Vec<(usize, Reply)>,
    events: Vec<Event>,
    span: tracing::Span,
    spans: Vec<tracing::Span>,
    /// The patients it changes: those its events name, and the local (retired) key of
    /// each identity link (merge) among them.
    keys: HashSet<PatientKey>,
    /// It holds an identity merge, which also changes a patient its events do not name:
    /// nothing else is in flight with it.
    barrier: bool,
}

impl Group {
    fn new(batch: Vec<Submission>) -> Group {
        let mut events = Vec::with_capacity(batch.iter().map(|s| s.events.len()).sum());
        let replies = batch
            .into_iter()
            .map(|s| {
                let n = s.events.len();
                events.extend(s.events);
                (n, s.reply)
            })
            .collect();
        let span = crate::trace::batch("intake", events.len());
        let spans = crate::trace::events(&span, &events);
        let keys = keys_of(&events);
        let barrier = events.iter().any(parcours_core::merge::is_merge);
        Group {
            replies,
            events,
            span,
            spans,
            keys,
            barrier,
        }
    }

    /// Take its events under a local key whose link the engine learned since they were
    /// last looked at (a commit in flight that held the link ended meanwhile) to the
    /// national key ([`Engine::follow_links`]); whether one moved (its keys then changed).
    fn follow_links<S: EventStore>(&mut self, engine: &Engine<S>) -> bool {
        if engine.follow_links(&mut self.events) == 0 {
            return false;
        }
        self.keys = keys_of(&self.events);
        for (span, e) in self.spans.iter().zip(&self.events) {
            span.record("subject", e.subject.as_str());
        }
        true
    }
}

/// The patients `events` change: each event's, and an identity link's local key (a
/// merge's retired key), whose patient its commit moves to the national (surviving) key.
fn keys_of(events: &[Event]) -> HashSet<PatientKey> {
    let mut keys = HashSet::with_capacity(events.len());
    for e in events {
        if let Ok((local, _)) = parcours_core::merge::keys(e) {
            keys.insert((e.tenant.clone(), local.to_owned()));
        }
        keys.insert((e.tenant.clone(), e.subject.clone()));
    }
    keys
}

/// A group whose commit was being written: the group, what was prepared, the outcome
/// (`Some(last position)`: committed; `None`: another writer got there first).
type Written = (Group, Prepared, Result<Option<u64>, RuntimeError>);

/// The group commits in flight. A group is decided (against the patients' committed
/// states) while earlier groups' commits are written, as long as it shares no patient
/// with them: a group touching a patient in flight waits until no commit in flight holds
/// one of its patients (an identity merge, until nothing is in flight), so
/// each patient's events are decided in order on the state their predecessors
/// committed, and a failed commit never has a successor decided on top of it. Groups of
/// disjoint patients commit independently (on PostgreSQL, positions are transaction ids:
/// readers never skip a late commit).
///
/// Identity links: a group holding an `identity.linked` changes its local key's patient
/// too (counted among its keys) and is a barrier. A group formed while it is in flight
/// may hold an event a front resolved before the link committed, under the local key:
/// once the waits ended a commit, the group follows the engine's links again
/// ([`Engine::follow_links`]) and, an event moved to the national key, waits for that
/// key's commits in flight in turn, until its keys stay put. So such an event is
/// decided after the link, on the national key (no store query: the engine's memory of
/// its links).
struct Pipeline<'a> {
    inflight: FuturesUnordered<Pin<Box<dyn Future<Output = Written> + Send>>>,
    keys: HashSet<PatientKey>,
    barrier: bool,
    max: usize,
    /// In flight at most without a backlog (see [`room`]).
    steady: usize,
    /// The events of the groups in flight.
    events: usize,
    /// Commits concluded so far (a group looks at the links again only after some did).
    concluded: u64,
    health: &'a Health,
    committed: &'a Notify,
}

impl<'a> Pipeline<'a> {
    fn new(max: usize, steady: usize, health: &'a Health, committed: &'a Notify) -> Pipeline<'a> {
        Pipeline {
            inflight: FuturesUnordered::new(),
            keys: HashSet::new(),
            barrier: false,
            max: max.max(1),
            steady,
            events: 0,
            concluded: 0,
            health,
            committed,
        }
    }

    /// Whether a new group may start with `waiting` submissions queued (see [`room`]).
    fn has_room(&self, waiting: usize) -> bool {
        room(
            self.inflight.len(),
            self.max,
            self.steady,
            waiting,
            self.events,
        )
    }

    /// Decide a group and start writing its commit (or answer it at once when it has
    /// nothing to write), after waiting for what it must not overlap.
    async fn start<S: EventStore + Clone + 'static>(
        &mut self,
        engine: &mut Engine<S>,
        mut batch: Vec<Submission>,
    ) {
        // Events a front resolved just before a link committed: on the linked key.
        for s in &mut batch {
            engine.follow_links(&mut s.events);
        }
        let mut group = Group::new(batch);
        loop {
            let concluded = self.concluded;
            if self.barrier || (group.barrier && !self.inflight.is_empty()) {
                self.drain(engine).await;
            }
            // Only the commits that hold one of its patients must end first; the others
            // go on.
            while group.keys.iter().any(|k| self.keys.contains(k)) {
                match self.inflight.next().await {
                    Some(written) => self.conclude(engine, written).await,
                    None => break,
                }
            }
            while self.inflight.len() >= self.max {
                match self.inflight.next().await {
                    Some(written) => self.conclude(engine, written).await,
                    None => break,
                }
            }
            // A commit that ended meanwhile may have held a link of one of its keys (a
            // link's group is a barrier: nothing was in flight beside it, so this group
            // waited for it above): its events under that local key are the national
            // key's, decided after the link and on the national key, whose commits in
            // flight they wait for in turn. Nothing ended: nothing to look at again.
            if self.concluded == concluded || !group.follow_links(engine) {
                break;
            }
        }
        let prepared = engine
            .prepare_batch(&group.events, Default::default())
            .instrument(group.span.clone())
            .await;
        let mut prepared = match prepared {
            Ok(p) => p,
            Err(e) => {
                self.answer(engine, group, Err(e)).await;
                return;
            }
        };
        let Some(commit) = prepared.take_commit() else {
            let result = engine.finish_batch(&group.events, prepared, true);
            self.answer(engine, group, result).await;
            return;
        };
        self.keys.extend(group.keys.iter().cloned());
        self.events += group.events.len();
        self.barrier = group.barrier;
        let store = engine.store().clone();
        let span = group.span.clone();
        let handoff = engine.handoffs().cloned().zip(prepared.take_effects());
        // Written by a task of its own, so that the commit goes on (and its transaction
        // ends) while this task decides the next group or looks up timers, rather than
        // only when the engine task polls it. Its effects go to the relay as soon as it is
        // written, before this patient's next commit is decided.
        let writing = tokio::spawn(async move {
            let begun = wall_instant();
            let written = write_commit(&store, commit).instrument(span).await;
            crate::metrics::metrics()
                .store_commit_seconds
                .observe(begun.elapsed().as_secs_f64());
            if let (Ok(Some(last)), Some((handoffs, effects))) = (&written, handoff) {
                handoffs.send(effects.handoff(*last));
            }
            written
        });
        self.inflight.push(Box::pin(async move {
            let r = writing.await.unwrap_or_else(|e| {
                // The write panicked: its outcome is unknown, so its submitters are told
                // to send again (their events' ids make that safe).
                Err(RuntimeError::Store(parcours_store::StoreError::Backend(
                    format!("the commit's task ended: {e}"),
                )))
            });
            (group, prepared, r)
        }));
    }

    /// Wait for every commit in flight and answer them.
    async fn drain<S: EventStore>(&mut self, engine: &mut Engine<S>) {
        while let Some(written) = self.inflight.next().await {
            self.conclude(engine, written).await;
        }
    }

    /// A commit was written (or not): memory follows, the submitters are answered.
    async fn conclude<S: EventStore>(&mut self, engine: &mut Engine<S>, written: Written) {
        let (group, prepared, r) = written;
        self.concluded += 1;
        self.events -= group.events.len();
        for k in &group.keys {
            self.keys.remove(k);
        }
        if group.barrier {
            self.barrier = false;
        }
        let result = match r {
            Ok(written) => engine.finish_batch(&group.events, prepared, written.is_some()),
            Err(e) => Err(e),
        };
        self.answer(engine, group, result).await;
    }

    /// Answer a group's submitters; a group that raced another writer (its patients
    /// dropped from memory) is tried again once, alone (no other group in flight shares
    /// its patients).
    async fn answer<S: EventStore>(
        &mut self,
        engine: &mut Engine<S>,
        mut group: Group,
        mut result: Result<Vec<EventResult>, RuntimeError>,
    ) {
        if matches!(result, Err(RuntimeError::Raced)) {
            result = engine
                .retry_batch(&mut group.events)
                .instrument(group.span.clone())
                .await;
            // Its events may have followed a link another engine committed.
            for (span, e) in group.spans.iter().zip(&group.events) {
                span.record("subject", e.subject.as_str());
            }
        }
        crate::trace::finish(&group.span, group.spans, &result);
        let health = self.health;
        match result {
            Ok(outcomes) => {
                health.store_failing.store(false, Ordering::Relaxed);
                let n = outcomes
                    .iter()
                    .filter(|o| matches!(o, Ok(IngestOutcome::Committed { .. })))
                    .count();
                health.committed.fetch_add(n as u64, Ordering::Relaxed);
                self.committed.notify_one();
                health.log_grew.notify_waiters();
                let mut outcomes = outcomes.into_iter();
                for (n, reply) in group.replies {
                    let mine: Vec<EventResult> = outcomes.by_ref().take(n).collect();
                    let _ = reply.send(Ok(mine));
                }
            }
            Err(e) => {
                if matches!(e, RuntimeError::Raced) {
                    // Raced again: the store answered, another writer was quicker twice.
                    // Not a failing store (`/readyz`, and the NATS consumer's count of a
                    // message's attempts, read that flag): the submitters send again.
                    tracing::warn!(
                        events = group.events.len(),
                        "commit raced another writer again after a retry; answered unavailable"
                    );
                } else {
                    tracing::error!(error = %e, events = group.events.len(), "commit failed");
                    health.store_failing.store(true, Ordering::Relaxed);
                }
                let err = SubmitError::Unavailable(e.to_string());
                for (_, reply) in group.replies {
                    let _ = reply.send(Err(err.clone()));
                }
            }
        }
    }
}

/// The outcome of the relay's reading of the log, its task's end included.
fn joined(
    r: Result<Result<usize, RuntimeError>, tokio::task::JoinError>,
) -> Result<usize, RuntimeError> {
    r.unwrap_or_else(|e| {
        Err(RuntimeError::Bus(crate::bus::BusError(format!(
            "the relay's reading of the log ended: {e}"
        ))))
    })
}

/// A relay round failed (the bus or the log unreachable): say so, and wait the doubling
/// backoff, or until the engine stops.
async fn relay_failed(
    e: &RuntimeError,
    health: &Health,
    backoff: &mut Duration,
    done: &CancellationToken,
) {
    tracing::warn!(error = %e, "relaying effects failed; retrying");
    health.bus_failing.store(true, Ordering::Relaxed);
    tokio::select! {
        _ = tokio::time::sleep(*backoff) => {}
        _ = done.cancelled() => {}
    }
    *backoff = (*backoff * 2).min(Duration::from_secs(5));
}

/// While handoffs publish this process's effects, the log is read back (for what other
/// processes wrote, and to move the checkpoint) at most this often after a commit.
const LOG_PASS_EVERY: Duration = Duration::from_millis(100);

/// While handoffs wait for the log to be relayed up to their floor, it is read again
/// after this long if nothing else happens first.
const HELD_RETRY: Duration = Duration::from_millis(10);

/// Effects handed over in memory waiting for the relay, at most; beyond, the log.
const HANDOFF_QUEUE: usize = 1024;

/// The relay task: publishes the commits' effects handed over by the engine as they
/// come, and reads the log back in a task of its own (a read can wait for an older
/// commit in flight; the handoffs do not wait for it) — at once when a commit was not
/// handed over (or a handoff waits for the log), at most every [`LOG_PASS_EVERY`]
/// otherwise, and every second when idle — for what was not, and to move the checkpoint.
async fn run_relay<S: EventStore + Clone + 'static, B: Bus + 'static>(
    relay: Relay<S>,
    bus: B,
    mut queue: HandoffQueue,
    health: Arc<Health>,
    committed: Arc<Notify>,
    engine_done: CancellationToken,
    mut leader: Option<watch::Receiver<bool>>,
) {
    let bus = Arc::new(bus);
    let mut backoff = Duration::from_millis(50);
    // When the log was last read back (`None`: read it now), and the reading in flight.
    let mut last_pass: Option<std::time::Instant> = None;
    let mut pass: Option<tokio::task::JoinHandle<Result<usize, RuntimeError>>> = None;
    // Commits were made, and handoffs taken, since the last reading began.
    let mut pending = true;
    let mut handed = false;
    let mut next: Option<relay::Handoff> = None;
    // Whether an engine side of the queue is left (without one, handoffs never come).
    let mut open = true;
    loop {
        let last_round = engine_done.is_cancelled();
        if let Some(l) = &mut leader
            && !*l.borrow_and_update()
        {
            // Another process relays; wait to become the one (or to stop). It moves the
            // checkpoint meanwhile and publishes from the log what was handed here.
            if let Some(p) = pass.take() {
                let _ = p.await;
            }
            if let Some(h) = next.take() {
                queue.missed(h.last);
            }
            relay.release(&mut queue);
            if last_round {
                return;
            }
            tokio::select! {
                r = l.changed() => if r.is_err() { return },
                _ = engine_done.cancelled() => return,
            }
            relay.release(&mut queue);
            last_pass = None;
            continue;
        }
        // Handoffs first: what the latency from commit to bus waits on.
        let mut outcome: Result<usize, RuntimeError> = async {
            while let Some(h) = next.take().or_else(|| queue.try_recv()) {
                handed = true;
                relay.hold(h, &queue);
            }
            relay.publish_handed(&*bus, &queue).await
        }
        .await;
        let since = last_pass.map(|t| t.elapsed());
        let idle = if relay.unsaved() {
            crate::relay::SAVE_EVERY
        } else {
            Duration::from_secs(1)
        };
        let due = last_round
            || relay.holds_handoffs()
            || since.is_none_or(|s| s >= idle || (pending && (!handed || s >= LOG_PASS_EVERY)));
        if outcome.is_ok() && pass.is_none() && due {
            last_pass = Some(wall_instant());
            pending = false;
            handed = false;
            let (relay, bus) = (relay.clone(), bus.clone());
            pass = Some(tokio::spawn(async move { relay.run_once(&*bus).await }));
        }
        if last_round && outcome.is_ok() {
            if let Some(p) = pass.take() {
                outcome = joined(p.await);
            }
            if let Ok(n) = &outcome {
                outcome = relay
                    .publish_handed(&*bus, &queue)
                    .await
                    .map(|more| n + more);
            }
        }
        match outcome {
            Ok(n) => {
                health.published.fetch_add(n as u64, Ordering::Relaxed);
                if n > 0 {
                    // A publish went through: the bus is back.
                    health.bus_failing.store(false, Ordering::Relaxed);
                    backoff = Duration::from_millis(50);
                }
            }
            Err(e) if last_round => {
                tracing::warn!(error = %e, "relaying effects failed");
                health.bus_failing.store(true, Ordering::Relaxed);
                // What is not published stays in the log: the next start relays it.
                let _ = relay.flush().await;
                return;
            }
            Err(e) => {
                relay_failed(&e, &health, &mut backoff, &engine_done).await;
                last_pass = None;
                continue;
            }
        }
        if last_round {
            if let Err(e) = relay.flush().await {
                tracing::warn!(error = %e, "saving the relay's checkpoint failed");
            }
            return;
        }
        // A checkpoint not saved yet is saved by a reading within `SAVE_EVERY`.
        let since = last_pass.map_or(Duration::ZERO, |t| t.elapsed());
        let wait = if relay.holds_handoffs() {
            HELD_RETRY
        } else if pending {
            LOG_PASS_EVERY.saturating_sub(since)
        } else if relay.unsaved() {
            crate::relay::SAVE_EVERY.saturating_sub(since)
        } else {
            Duration::from_secs(1).saturating_sub(since)
        };
        tokio::select! {
            biased;
            h = queue.recv(), if open => match h {
                Some(h) => next = Some(h),
                None => open = false,
            },
            r = async {
                match pass.as_mut() {
                    Some(p) => p.await,
                    None => std::future::pending().await,
                }
            }, if pass.is_some() => {
                pass = None;
                match joined(r) {
                    Ok(n) => {
                        health.published.fetch_add(n as u64, Ordering::Relaxed);
                        health.bus_failing.store(false, Ordering::Relaxed);
                        backoff = Duration::from_millis(50);
                    }
                    Err(e) => {
                        relay_failed(&e, &health, &mut backoff, &engine_done).await;
                        last_pass = None;
                    }
                }
            }
            _ = committed.notified() => pending = true,
            _ = engine_done.cancelled() => {}
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use tokio::sync::{Notify, mpsc, oneshot};

    use super::{BACKLOG, GATHER_YIELDS, LARGE_GROUPS, Submission, gather, room};

    fn submission(events: usize) -> Submission {
        let event = crate::trace::tests::event("e-1");
        Submission {
            events: vec![event; events],
            reply: oneshot::channel().0,
        }
    }

    /// `clients` tasks, woken together (as a commit's answers wake its clients), each
    /// submitting once when it runs.
    fn clients(tx: &mpsc::Sender<Submission>, clients: usize) -> Arc<Notify> {
        let answered = Arc::new(Notify::new());
        for _ in 0..clients {
            let tx = tx.clone();
            let waiting = answered.clone().notified_owned();
            tokio::spawn(async move {
                waiting.await;
                let _ = tx.send(submission(1)).await;
            });
        }
        answered
    }

    // One thread: the clients run only when the engine's task yields.
    #[tokio::test(flavor = "current_thread")]
    async fn a_group_takes_the_submissions_of_clients_just_answered() {
        let (tx, mut rx) = mpsc::channel(1024);
        let answered = clients(&tx, 40);
        answered.notify_waiters();
        let batch = gather(submission(1), &mut rx, 1024).await;
        assert_eq!(
            batch.len(),
            41,
            "the 40 clients woken join the first submission"
        );
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_group_stops_at_max_batch_and_after_a_bounded_number_of_yields() {
        let (tx, mut rx) = mpsc::channel(1024);
        for _ in 0..10 {
            tx.send(submission(3)).await.unwrap();
        }
        // 1 + 5 × 3 = 16 events: a sixth queued submission would pass `max_batch`.
        let batch = gather(submission(1), &mut rx, 16).await;
        assert_eq!(batch.len(), 6);
        assert_eq!(rx.len(), 5, "the rest stays queued for the next group");

        // A client that keeps sending never holds a group open for ever.
        let (tx, mut rx) = mpsc::channel(1024);
        let sender = tokio::spawn(async move {
            while tx.send(submission(1)).await.is_ok() {
                tokio::task::yield_now().await;
            }
        });
        let batch = gather(submission(1), &mut rx, 1024).await;
        assert!(
            batch.len() <= GATHER_YIELDS + 2,
            "{} submissions",
            batch.len()
        );
        sender.abort();
    }

    #[tokio::test(flavor = "current_thread")]
    async fn alone_a_submission_is_a_group_at_once() {
        let (_tx, mut rx) = mpsc::channel::<Submission>(8);
        assert_eq!(gather(submission(2), &mut rx, 1024).await.len(), 1);
    }

    #[test]
    fn slots_beyond_the_steady_ones_open_only_for_a_backlog() {
        let small = 4;
        // One at a time stays one at a time.
        assert!(room(0, 1, 1, 0, 0));
        assert!(!room(1, 1, 1, 1000, 100 * LARGE_GROUPS));
        // A steady rate: up to the store's steady commits (PostgreSQL's two), whatever
        // the maximum.
        assert!(room(0, 4, 2, 1, 0));
        assert!(room(1, 4, 2, 1, small));
        assert!(!room(2, 4, 2, 1, 2 * small));
        assert!(!room(2, 4, 2, BACKLOG - 1, 2 * small));
        // A backlog, queued or in large groups: up to the maximum, never beyond.
        assert!(room(2, 4, 2, BACKLOG, 2 * small));
        assert!(room(3, 4, 2, BACKLOG, 3 * small));
        assert!(!room(4, 4, 2, 10 * BACKLOG, 4 * small));
        assert!(room(2, 4, 2, 0, 2 * LARGE_GROUPS));
        assert!(!room(2, 4, 2, 0, 2 * LARGE_GROUPS - 1));
        assert!(!room(4, 4, 2, 0, 100 * LARGE_GROUPS));
        // SQLite: one at a steady rate, the second for a backlog or while a large group
        // is written.
        assert!(room(0, 2, 1, 0, 0));
        assert!(!room(1, 2, 1, BACKLOG - 1, LARGE_GROUPS - 1));
        assert!(room(1, 2, 1, BACKLOG, small));
        assert!(room(1, 2, 1, 0, LARGE_GROUPS));
        assert!(!room(2, 2, 1, 10 * BACKLOG, 10 * LARGE_GROUPS));
        // A store saying zero still takes one at a time.
        assert!(room(0, 2, 0, 0, 0));
    }
}
