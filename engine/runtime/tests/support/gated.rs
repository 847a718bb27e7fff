//! A real store whose commits wait at a gate the test opens: a commit held in flight
//! for as long as a test needs, deterministically (fault injection around the real
//! SQLite or PostgreSQL log, which does everything else).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use parcours_store::{Appended, Commit, EventStore, StoreError};
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

    parcours_store::delegate_event_store!(inner: reads, projections, dead_letters);
}
