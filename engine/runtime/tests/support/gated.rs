//! A real store whose commits wait at a gate the test opens: a commit held in flight
//! for as long as a test needs, deterministically (fault injection around the real
//! SQLite or PostgreSQL log, which does everything else).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use jiff::Timestamp;
use parcours_store::{
    Appended, Commit, DeadLetter, DeadLetterFilter, EventStore, IndexChanges, InstanceFilter,
    InstanceRow, RecordHead, RecordView, Snapshot, StoreError, StoredDeadLetter, StoredId,
    StoredRecord, TimerRow, TimerScope, WorkFilter, WorkItem,
};
use tokio::sync::watch;

/// `inner`, whose appends wait while the gate is closed. Cheap to clone (the clones share
/// the gate).
#[derive(Clone, Debug)]
pub struct Gated<S> {
    inner: S,
    open: Arc<watch::Sender<bool>>,
    waiting: Arc<AtomicUsize>,
    steady: Option<usize>,
}

impl<S: EventStore> Gated<S> {
    /// `inner` behind an open gate.
    pub fn new(inner: S) -> Gated<S> {
        Gated {
            inner,
            open: Arc::new(watch::channel(true).0),
            waiting: Arc::default(),
            steady: None,
        }
    }

    /// The same, saying `steady` for [`EventStore::steady_appends`] (SQLite says 1:
    /// with 2, a service keeps two of its commits in flight at a steady rate, as on
    /// PostgreSQL).
    pub fn with_steady_appends(mut self, steady: usize) -> Gated<S> {
        self.steady = Some(steady);
        self
    }

    /// Hold every append from now on, until [`Gated::open`].
    pub fn close(&self) {
        self.open.send_replace(false);
    }

    /// Let the appends held (and the next ones) go.
    pub fn open(&self) {
        self.open.send_replace(true);
    }

    /// Appends waiting at the gate now.
    pub fn waiting(&self) -> usize {
        self.waiting.load(Ordering::SeqCst)
    }

    /// The store behind the gate.
    pub fn inner(&self) -> &S {
        &self.inner
    }
}

impl<S: EventStore> EventStore for Gated<S> {
    async fn append(&self, commit: Commit) -> Result<Appended, StoreError> {
        let mut open = self.open.subscribe();
        if !*open.borrow_and_update() {
            self.waiting.fetch_add(1, Ordering::SeqCst);
            let _ = open.wait_for(|o| *o).await;
            self.waiting.fetch_sub(1, Ordering::SeqCst);
        }
        self.inner.append(commit).await
    }

    fn concurrent_appends(&self) -> usize {
        self.inner.concurrent_appends()
    }

    fn steady_appends(&self) -> usize {
        self.steady.unwrap_or_else(|| self.inner.steady_appends())
    }

    async fn read_stream(
        &self,
        stream: &str,
        after_version: u64,
    ) -> Result<Vec<StoredRecord>, StoreError> {
        self.inner.read_stream(stream, after_version).await
    }

    async fn read_streams_by_prefix(&self, prefix: &str) -> Result<Vec<StoredRecord>, StoreError> {
        self.inner.read_streams_by_prefix(prefix).await
    }

    async fn read_all(&self, after: u64, limit: usize) -> Result<Vec<StoredRecord>, StoreError> {
        self.inner.read_all(after, limit).await
    }

    async fn read_heads(&self, after: u64, limit: usize) -> Result<Vec<RecordHead>, StoreError> {
        self.inner.read_heads(after, limit).await
    }

    async fn read_at(&self, positions: &[u64]) -> Result<Vec<StoredRecord>, StoreError> {
        self.inner.read_at(positions).await
    }

    async fn last_position(&self) -> Result<u64, StoreError> {
        self.inner.last_position().await
    }

    async fn scan_all<A, F>(
        &self,
        after: u64,
        limit: usize,
        acc: A,
        visit: F,
    ) -> Result<(A, Option<u64>), StoreError>
    where
        A: Send + 'static,
        F: FnMut(&mut A, RecordView<'_>) + Send + 'static,
    {
        self.inner.scan_all(after, limit, acc, visit).await
    }

    async fn contains(&self, id: &str) -> Result<bool, StoreError> {
        self.inner.contains(id).await
    }

    async fn stored_ids(&self, ids: &[String]) -> Result<Vec<String>, StoreError> {
        self.inner.stored_ids(ids).await
    }

    async fn stored_events(&self, ids: &[String]) -> Result<Vec<StoredId>, StoreError> {
        self.inner.stored_events(ids).await
    }

    async fn stream_version(&self, stream: &str) -> Result<u64, StoreError> {
        self.inner.stream_version(stream).await
    }

    async fn stream_versions(&self, streams: &[String]) -> Result<Vec<u64>, StoreError> {
        self.inner.stream_versions(streams).await
    }

    async fn latest_subjects(&self, streams: &[String]) -> Result<Vec<Option<String>>, StoreError> {
        self.inner.latest_subjects(streams).await
    }

    async fn write_index(&self, changes: IndexChanges) -> Result<(), StoreError> {
        self.inner.write_index(changes).await
    }

    async fn clear_index(&self) -> Result<(), StoreError> {
        self.inner.clear_index().await
    }

    async fn instance(&self, stream: &str) -> Result<Option<InstanceRow>, StoreError> {
        self.inner.instance(stream).await
    }

    async fn instances_of(
        &self,
        tenant: &str,
        subject: &str,
    ) -> Result<Vec<InstanceRow>, StoreError> {
        self.inner.instances_of(tenant, subject).await
    }

    async fn instances_of_many(
        &self,
        patients: &[(&str, &str)],
    ) -> Result<Vec<Vec<InstanceRow>>, StoreError> {
        self.inner.instances_of_many(patients).await
    }

    async fn list_instances(
        &self,
        filter: &InstanceFilter,
    ) -> Result<Vec<InstanceRow>, StoreError> {
        self.inner.list_instances(filter).await
    }

    async fn due_timers(
        &self,
        until: Timestamp,
        limit: usize,
        scope: &TimerScope,
    ) -> Result<Vec<TimerRow>, StoreError> {
        self.inner.due_timers(until, limit, scope).await
    }

    async fn next_timer(&self, scope: &TimerScope) -> Result<Option<Timestamp>, StoreError> {
        self.inner.next_timer(scope).await
    }

    async fn count_timers(&self) -> Result<u64, StoreError> {
        self.inner.count_timers().await
    }

    async fn work_items(&self, filter: &WorkFilter) -> Result<Vec<WorkItem>, StoreError> {
        self.inner.work_items(filter).await
    }

    async fn work_item(&self, id: &str) -> Result<Option<WorkItem>, StoreError> {
        self.inner.work_item(id).await
    }

    async fn snapshot(&self, stream: &str) -> Result<Option<Snapshot>, StoreError> {
        self.inner.snapshot(stream).await
    }

    async fn dead_letter(&self, letter: DeadLetter) -> Result<u64, StoreError> {
        self.inner.dead_letter(letter).await
    }

    async fn dead_letters(
        &self,
        after: u64,
        limit: usize,
    ) -> Result<Vec<StoredDeadLetter>, StoreError> {
        self.inner.dead_letters(after, limit).await
    }

    async fn list_dead_letters(
        &self,
        filter: &DeadLetterFilter,
    ) -> Result<Vec<StoredDeadLetter>, StoreError> {
        self.inner.list_dead_letters(filter).await
    }

    async fn dead_letter_by_id(&self, id: u64) -> Result<Option<StoredDeadLetter>, StoreError> {
        self.inner.dead_letter_by_id(id).await
    }

    async fn checkpoint(&self, name: &str) -> Result<Option<u64>, StoreError> {
        self.inner.checkpoint(name).await
    }

    async fn save_checkpoint(&self, name: &str, position: u64) -> Result<(), StoreError> {
        self.inner.save_checkpoint(name, position).await
    }
}
