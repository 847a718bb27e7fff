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
    gate: Arc<watch::Sender<Gate>>,
    waiting: Arc<AtomicUsize>,
    held: Arc<AtomicUsize>,
    steady: Option<usize>,
}

/// The gate: open, or closed with appends it still lets through one by one.
#[derive(Debug, Default)]
struct Gate {
    closed: bool,
    passes: usize,
}

impl<S: EventStore> Gated<S> {
    /// `inner` behind an open gate.
    pub fn new(inner: S) -> Gated<S> {
        Gated {
            inner,
            gate: Arc::new(watch::channel(Gate::default()).0),
            waiting: Arc::default(),
            held: Arc::default(),
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
        self.gate.send_modify(|g| g.closed = true);
    }

    /// Let the appends held (and the next ones) go.
    pub fn open(&self) {
        self.gate.send_replace(Gate::default());
    }

    /// Let one append through (the first waiting, or the next to come), the gate kept
    /// closed for the others.
    pub fn pass_one(&self) {
        self.gate.send_modify(|g| g.passes += 1);
    }

    /// Appends waiting at the gate now.
    pub fn waiting(&self) -> usize {
        self.waiting.load(Ordering::SeqCst)
    }

    /// Appends held at the gate so far (let through or not).
    pub fn held(&self) -> usize {
        self.held.load(Ordering::SeqCst)
    }

    /// The store behind the gate.
    pub fn inner(&self) -> &S {
        &self.inner
    }
}

impl<S: EventStore> EventStore for Gated<S> {
    async fn append(&self, commit: Commit) -> Result<Appended, StoreError> {
        let mut seen = self.gate.subscribe();
        if seen.borrow_and_update().closed {
            self.waiting.fetch_add(1, Ordering::SeqCst);
            self.held.fetch_add(1, Ordering::SeqCst);
            loop {
                let _ = seen.wait_for(|g| !g.closed || g.passes > 0).await;
                let mut through = false;
                self.gate.send_if_modified(|g| {
                    through = !g.closed || g.passes > 0;
                    if g.closed && g.passes > 0 {
                        g.passes -= 1;
                        return true;
                    }
                    false
                });
                if through {
                    break;
                }
            }
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
