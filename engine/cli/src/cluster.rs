//! Production mode: several `parcours serve` processes share the work over NATS and a
//! PostgreSQL log.
//!
//! - **Ownership.** Patients are split into partitions (`partition_of`, the same count
//!   on every process and in the inbound subjects). Each process owns a fair share,
//!   held as PostgreSQL session advisory locks ([`parcours_store_postgres::lease`]): a
//!   process that dies or loses its connection loses its partitions at once, and the
//!   others take them up at their next round ([`ROUND`]). One loop per owned partition
//!   consumes its NATS consumer in order into this process's engine; the engine fires
//!   the timers of owned partitions only; one process at a time relays effects.
//! - **Intake.** The HTTP API and the MLLP listener of any process publish to the
//!   inbound stream ([`NatsForward`]) and wait, a bounded time, for the owner's commit
//!   or refusal (the owner's reply), answering as the owner's engine did; an id the log
//!   holds is answered before forwarding, a duplicate or an id reused
//!   (`parcours_runtime::resend::known`).
//! - **Giving a partition up** (a newcomer joined): its loop finishes the batch in hand
//!   (commit, then acks) before the lock is released.
//! - **Losing the leases' connection**: every loop stops at once and the process owns
//!   nothing until it has reconnected; the partitions' optimistic concurrency in the log
//!   (expected stream versions) keeps a late writer from changing what another
//!   process decided.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use futures::StreamExt;
use parcours_core::events::Event;
use parcours_nats::{FhirConsumer, InboundConsumer, Nats, OwnerReply, PublishError};
use parcours_runtime::{
    EventResult, Forward, Forwarded, Handle, Health, IngestOutcome, Refused, SubmitError,
};
use parcours_store::{EventStore, TimerScope};
use parcours_store_postgres::Leases;
use parcours_store_postgres::lease::rebalance;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// How often a process looks at the leases (members joining or gone).
pub(crate) const ROUND: Duration = Duration::from_secs(1);

/// The HTTP and MLLP intake of a production process: publish to the inbound stream,
/// then wait for the owner's commit.
#[derive(Debug)]
pub(crate) struct NatsForward<S> {
    pub(crate) nats: Nats,
    pub(crate) store: S,
    /// How long a caller waits for the commit or refusal before hearing "queued".
    pub(crate) wait: Duration,
}

impl<S: EventStore + std::fmt::Debug + 'static> Forward for NatsForward<S> {
    fn forward(&self, events: Vec<Event>) -> Forwarded<'_> {
        Box::pin(async move {
            let unavailable =
                |e: parcours_store::StoreError| SubmitError::Unavailable(e.to_string());
            // Ids the log holds already: a duplicate, or an id reused, as a local engine
            // would judge them (a resend after a link or a merge included).
            let mut results: Vec<Option<EventResult>> =
                parcours_runtime::resend::known(&self.store, &events)
                    .await
                    .map_err(unavailable)?;
            let fresh: Vec<Event> = events
                .iter()
                .zip(&results)
                .filter(|(_, r)| r.is_none())
                .map(|(e, _)| e.clone())
                .collect();
            // The owner tells what it said of each event it commits or refuses on an
            // inbox of ours (`HEADER_REPLY`): its warnings, its refusal. Without the inbox
            // (NATS refused the subscription), the log alone says when each is committed.
            let inbox = self.nats.client().new_inbox();
            let mut replies = match self.nats.client().subscribe(inbox.clone()).await {
                Ok(s) => Some(s),
                Err(e) => {
                    tracing::debug!(error = %e, "no inbox for the owners' replies");
                    None
                }
            };
            let reply_to = replies.as_ref().map(|_| inbox.as_str());
            let mut published = self
                .nats
                .publish_inbound_replying(&fresh, reply_to)
                .await
                .into_iter();
            let mut warnings: std::collections::HashMap<String, Vec<String>> =
                std::collections::HashMap::new();
            let mut refusals: std::collections::HashMap<String, Refused> =
                std::collections::HashMap::new();
            for r in results.iter_mut() {
                if r.is_some() {
                    continue;
                }
                match published.next() {
                    Some(Ok(_)) => {}
                    Some(Err(PublishError::Invalid(reason))) => {
                        *r = Some(Err(Refused::Invalid(reason)))
                    }
                    Some(Err(e)) => return Err(SubmitError::Unavailable(e.to_string())),
                    None => {
                        return Err(SubmitError::Unavailable(
                            "the inbound stream did not answer".into(),
                        ));
                    }
                }
            }
            // Wait for the owner's commit, polling the log (a read by primary key), and
            // for its replies meanwhile. An event seen in the log whose reply has not come
            // is given one more pause for it (the owner replies just after committing;
            // one of an earlier release never does).
            let deadline = tokio::time::Instant::now() + self.wait;
            let mut pause = Duration::from_millis(5);
            let mut stored_unreplied: std::collections::HashSet<String> =
                std::collections::HashSet::new();
            loop {
                // Refused by the owner: answered as the owner's engine answered it (the
                // log may hold the id, for another event).
                for (e, r) in events.iter().zip(results.iter_mut()) {
                    if r.is_none()
                        && let Some(refused) = refusals.remove(&e.id)
                    {
                        *r = Some(Err(refused));
                    }
                }
                let waiting: Vec<String> = events
                    .iter()
                    .zip(&results)
                    .filter(|(_, r)| r.is_none())
                    .map(|(e, _)| e.id.clone())
                    .collect();
                if waiting.is_empty() {
                    break;
                }
                let stored: std::collections::HashSet<String> = self
                    .store
                    .stored_ids(&waiting)
                    .await
                    .map_err(unavailable)?
                    .into_iter()
                    .collect();
                for (e, r) in events.iter().zip(results.iter_mut()) {
                    if r.is_some() || !stored.contains(&e.id) {
                        continue;
                    }
                    if let Some(w) = warnings.remove(&e.id) {
                        *r = Some(Ok(IngestOutcome::CommittedByOwner { warnings: w }));
                    } else if replies.is_none() || !stored_unreplied.insert(e.id.clone()) {
                        // Seen in the log a pause ago and still no reply: none is coming.
                        *r = Some(Ok(IngestOutcome::CommittedByOwner {
                            warnings: Vec::new(),
                        }));
                    }
                }
                if results.iter().all(Option::is_some) {
                    break;
                }
                if tokio::time::Instant::now() >= deadline {
                    // Committed, the replies not heard in time: committed all the same.
                    for (e, r) in events.iter().zip(results.iter_mut()) {
                        if r.is_none() && stored_unreplied.contains(&e.id) {
                            *r = Some(Ok(IngestOutcome::CommittedByOwner {
                                warnings: Vec::new(),
                            }));
                        }
                    }
                    break;
                }
                // A reply read while waiting ends the pause: its event is committed, or
                // refused.
                let next = async {
                    match replies.as_mut() {
                        Some(s) => s.next().await,
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    () = tokio::time::sleep(pause) => {}
                    msg = next => match msg {
                        Some(msg) => {
                            if let Ok(reply) = serde_json::from_slice::<OwnerReply>(&msg.payload) {
                                match reply.refused {
                                    Some(refusal) => {
                                        refusals.insert(reply.id, refusal.into());
                                    }
                                    None => {
                                        warnings.insert(reply.id, reply.warnings);
                                    }
                                }
                            }
                        }
                        None => replies = None,
                    },
                }
                pause = (pause * 2).min(Duration::from_millis(100));
            }
            Ok(results
                .into_iter()
                .map(|r| r.unwrap_or(Ok(IngestOutcome::Queued)))
                .collect())
        })
    }
}

/// What the ownership loop drives.
pub(crate) struct Cluster {
    /// The log's PostgreSQL URL (the leases' connection).
    pub(crate) url: String,
    pub(crate) partitions: u16,
    pub(crate) consumer: InboundConsumer<Handle>,
    /// FHIR over NATS: run by the owner of partition 0, beside that partition's loop.
    pub(crate) fhir: FhirConsumer<Handle>,
    pub(crate) nats: Nats,
    pub(crate) scope: watch::Sender<TimerScope>,
    pub(crate) relay: watch::Sender<bool>,
    pub(crate) health: Arc<Health>,
}

/// A partition loop running on this process.
struct Running {
    token: CancellationToken,
    task: JoinHandle<()>,
}

impl Cluster {
    /// Own partitions and consume them until `token` is cancelled; then stop every
    /// partition loop (each finishes its batch) and release the leases.
    pub(crate) async fn run(self, token: CancellationToken) {
        let mut running: BTreeMap<u16, Running> = BTreeMap::new();
        let mut backoff = Duration::from_millis(100);
        'connect: loop {
            let mut leases = match Leases::connect(&self.url).await {
                Ok(mut l) => match l.join().await {
                    Ok(slot) => {
                        tracing::info!(member = slot, "joined the engines sharing the log");
                        l
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "could not join; retrying");
                        if self.pause(&token, &mut backoff).await {
                            return;
                        }
                        continue 'connect;
                    }
                },
                Err(e) => {
                    tracing::warn!(error = %e, "leases: PostgreSQL unreachable; retrying");
                    if self.pause(&token, &mut backoff).await {
                        return;
                    }
                    continue 'connect;
                }
            };
            backoff = Duration::from_millis(100);
            loop {
                if token.is_cancelled() {
                    self.stop_all(&mut running).await;
                    self.publish(&leases);
                    if let Err(e) = leases.close().await {
                        tracing::debug!(error = %e, "closing the leases' connection");
                    }
                    return;
                }
                if let Err(e) = self.step(&mut leases, &mut running).await {
                    // The leases may be gone with the connection: stop owning anything.
                    tracing::error!(error = %e, partitions = running.len(), "leases lost; stopping every partition until reconnected");
                    self.health.intake_failing.store(true, Ordering::Relaxed);
                    self.stop_all(&mut running).await;
                    let _ = self.scope.send(TimerScope::Partitions {
                        count: self.partitions,
                        owned: Vec::new(),
                    });
                    let _ = self.relay.send(false);
                    continue 'connect;
                }
                tokio::select! {
                    _ = token.cancelled() => {}
                    _ = tokio::time::sleep(ROUND) => {}
                }
            }
        }
    }

    /// Sleep with backoff; `true` when cancelled meanwhile.
    async fn pause(&self, token: &CancellationToken, backoff: &mut Duration) -> bool {
        self.health.intake_failing.store(true, Ordering::Relaxed);
        let cancelled = tokio::select! {
            _ = token.cancelled() => true,
            _ = tokio::time::sleep(*backoff) => false,
        };
        *backoff = (*backoff * 2).min(Duration::from_secs(5));
        cancelled
    }

    async fn step(
        &self,
        leases: &mut Leases,
        running: &mut BTreeMap<u16, Running>,
    ) -> Result<(), parcours_store::StoreError> {
        let members = leases.members().await?;
        let held = leases.holders().await?;
        let (take, give) = rebalance(self.partitions, members, leases.owned(), &held);
        for p in give {
            // Stop firing its timers, finish its batch, then let it go.
            let mut owned: Vec<u16> = leases.owned().iter().copied().collect();
            owned.retain(|o| *o != p);
            let _ = self.scope.send(TimerScope::Partitions {
                count: self.partitions,
                owned,
            });
            if let Some(r) = running.remove(&p) {
                r.token.cancel();
                let _ = r.task.await;
            }
            leases.release(p).await?;
            tracing::info!(partition = p, "partition given up");
        }
        for p in take {
            if leases.try_acquire(p).await? {
                tracing::info!(partition = p, members, "partition owned");
                // The previous owner may have died with messages in hand: make them
                // come first again, before the partition's newer events.
                if let Err(e) = self.nats.take_over_partition(p).await {
                    tracing::warn!(partition = p, error = %e, "could not check the partition's consumer; giving the partition back until the next round");
                    leases.release(p).await?;
                }
            }
        }
        // A loop per owned partition (started now, or again if it ended on an error).
        for p in leases.owned().iter().copied() {
            if running.get(&p).is_some_and(|r| !r.task.is_finished()) {
                continue;
            }
            let token = CancellationToken::new();
            let consumer = self.consumer.clone();
            let fhir = (p == 0).then(|| self.fhir.clone());
            let t = token.clone();
            let task = tokio::spawn(async move {
                let partition = async {
                    if let Err(e) = consumer.run_partition(p, t.clone()).await {
                        tracing::error!(partition = p, error = %e, "partition consumer stopped");
                    }
                };
                let fhir = async {
                    if let Some(f) = fhir
                        && let Err(e) = f.run(t.clone()).await
                    {
                        tracing::error!(error = %e, "FHIR consumer stopped");
                    }
                };
                tokio::join!(partition, fhir);
            });
            running.insert(p, Running { token, task });
        }
        leases.try_relay().await?;
        self.publish(leases);
        self.health.intake_failing.store(false, Ordering::Relaxed);
        Ok(())
    }

    fn publish(&self, leases: &Leases) {
        let scope = TimerScope::Partitions {
            count: self.partitions,
            owned: leases.owned().iter().copied().collect(),
        };
        self.scope.send_if_modified(|s| {
            let changed = *s != scope;
            *s = scope;
            changed
        });
        let relay = leases.is_relay();
        self.relay.send_if_modified(|r| {
            let changed = *r != relay;
            *r = relay;
            changed
        });
    }

    async fn stop_all(&self, running: &mut BTreeMap<u16, Running>) {
        for r in running.values() {
            r.token.cancel();
        }
        for (_, r) in std::mem::take(running) {
            let _ = r.task.await;
        }
    }
}
