//! `GET /metrics`: the Prometheus text exposition.
//!
//! The runtime's process-wide metrics ([`parcours_runtime::metrics`]) plus the pathway
//! indicators of the log ([`parcours_runtime::indicators`]). The indicators are a fold
//! of the log kept by this endpoint. From the first scrape on, a background task folds
//! what is committed, [`RECORDS_PER_TURN`] records at a time (by default) and every
//! [`FOLD_EVERY`] once at the log's end, so a scrape only adds the last records (at most
//! [`SCRAPE_RECORDS`]) and exports: its cost does not grow with the rate of events, and
//! the fold keeps up with any rate the engine sustains. After a start on a long log, the indicator families are
//! left out (`parcours_indicators_caught_up 0`, `parcours_indicators_log_position`
//! moving) until the fold has reached the log's end: dashboards and alerts see no
//! partial counts.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use parcours_runtime::indicators::{DomainMetrics, Indicators};
use parcours_runtime::{Handle, SharedRegistry, metrics};
use parcours_store::EventStore;
use tokio::sync::Mutex;

/// Records a scrape, or a turn of the background fold, folds at most by default (a turn
/// holds the fold for a fraction of a second; [`crate::Limits`] sets it).
pub const RECORDS_PER_TURN: usize = 20_000;

/// The background fold's pause once it has reached the log's end.
pub const FOLD_EVERY: Duration = Duration::from_secs(1);

/// Records a scrape folds itself at most (what the background fold has not reached yet:
/// about a second of events), so that its answer is current without its cost growing
/// with the rate of events.
pub const SCRAPE_RECORDS: usize = 4_096;

/// The content type of the text exposition format.
pub(crate) const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

struct MetricsState<S> {
    store: S,
    registry: SharedRegistry,
    handle: Handle,
    fold: Mutex<Fold>,
    /// Records folded in one go.
    per_turn: usize,
    /// Whether the background fold was started (by the first scrape).
    folding: AtomicBool,
}

struct Fold {
    indicators: Indicators,
    domain: DomainMetrics,
    /// Whether the fold has reached the log's end once.
    caught_up: bool,
}

impl Fold {
    /// Fold at most `most` more records; how many were read.
    async fn turn<S: EventStore>(&mut self, store: &S, most: usize) -> Result<usize, String> {
        let read = self
            .indicators
            .catch_up(store, most)
            .await
            .map_err(|e| e.to_string())?;
        if read < most && !self.caught_up {
            self.caught_up = true;
            metrics::metrics().indicators_caught_up.set(1);
        }
        Ok(read)
    }
}

/// The `/metrics` route, with its own state (the indicators' fold).
pub(crate) fn router<S: EventStore + Clone + 'static>(
    store: S,
    registry: SharedRegistry,
    handle: Handle,
    per_turn: usize,
) -> Router {
    let state = Arc::new(MetricsState {
        store,
        registry,
        handle,
        fold: Mutex::new(Fold {
            indicators: Indicators::new(),
            domain: DomainMetrics::new(),
            caught_up: false,
        }),
        per_turn,
        folding: AtomicBool::new(false),
    });
    Router::new()
        .route("/metrics", get(scrape::<S>))
        .with_state(state)
}

/// Fold the log in the background while the route exists: a turn, then the next at once
/// while the log is behind, or after [`FOLD_EVERY`] at its end.
fn start_folding<S: EventStore + Clone + 'static>(m: &Arc<MetricsState<S>>) {
    if m.folding.swap(true, Ordering::SeqCst) {
        return;
    }
    let weak: Weak<MetricsState<S>> = Arc::downgrade(m);
    tokio::spawn(async move {
        let mut failing = false;
        loop {
            let Some(m) = weak.upgrade() else { return };
            let read = m.fold.lock().await.turn(&m.store, m.per_turn).await;
            let per_turn = m.per_turn;
            drop(m);
            match read {
                Ok(n) if n >= per_turn => {
                    failing = false;
                    tokio::task::yield_now().await;
                    continue;
                }
                Ok(_) => failing = false,
                Err(e) => {
                    if !failing {
                        tracing::warn!(error = %e, "metrics: reading the log for indicators failed; tried again every second");
                    }
                    failing = true;
                }
            }
            tokio::time::sleep(FOLD_EVERY).await;
        }
    });
}

async fn scrape<S: EventStore + Clone + 'static>(
    State(m): State<Arc<MetricsState<S>>>,
) -> Response {
    let rt = metrics::metrics();
    let health = m.handle.health();
    let relaxed = std::sync::atomic::Ordering::Relaxed;
    rt.ready.set(i64::from(health.ready()));
    rt.store_up
        .set(i64::from(!health.store_failing.load(relaxed)));
    // Up while connected and the last relay round succeeded: a NATS outage with nothing
    // to relay shows too, not only in /readyz.
    rt.bus_up.set(i64::from(
        !health.bus_failing.load(relaxed) && !health.bus_disconnected.load(relaxed),
    ));
    match m.store.count_timers().await {
        Ok(n) => rt
            .instances_with_timers
            .set(i64::try_from(n).unwrap_or(i64::MAX)),
        Err(e) => tracing::warn!(error = %e, "metrics: counting timer rows failed"),
    }
    start_folding(&m);
    let mut guard = m.fold.lock().await;
    if let Err(e) = guard.turn(&m.store, m.per_turn.min(SCRAPE_RECORDS)).await {
        tracing::warn!(error = %e, "metrics: reading the log for indicators failed");
    }
    let Fold {
        indicators,
        domain,
        caught_up,
    } = &mut *guard;
    if *caught_up {
        domain.export(indicators, &m.registry.current());
    } else {
        domain.export_position(indicators);
    }
    let mut families = metrics::gather();
    families.extend(domain.gather());
    drop(guard);
    let body = metrics::encode(&families);
    (StatusCode::OK, [(header::CONTENT_TYPE, CONTENT_TYPE)], body).into_response()
}
