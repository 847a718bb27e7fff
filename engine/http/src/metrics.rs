//! `GET /metrics`: the Prometheus text exposition.
//!
//! The runtime's process-wide metrics ([`parcours_runtime::metrics`]) plus the pathway
//! indicators of the log ([`parcours_runtime::indicators`]). The indicators are a fold
//! of the log kept by this endpoint: each scrape first folds what was committed since the
//! previous one (at most [`MAX_RECORDS_PER_SCRAPE`]; a first scrape of a large log catches
//! up over a few scrapes), so a scrape costs what happened since the last one.

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use parcours_runtime::indicators::{DomainMetrics, Indicators};
use parcours_runtime::{Handle, SharedRegistry, metrics};
use parcours_store::EventStore;
use tokio::sync::Mutex;

/// Records folded into the indicators per scrape at most.
pub const MAX_RECORDS_PER_SCRAPE: usize = 200_000;

/// The content type of the text exposition format.
pub(crate) const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

struct MetricsState<S> {
    store: S,
    registry: SharedRegistry,
    handle: Handle,
    fold: Mutex<(Indicators, DomainMetrics)>,
}

/// The `/metrics` route, with its own state (the indicators' fold).
pub(crate) fn router<S: EventStore + Clone + 'static>(
    store: S,
    registry: SharedRegistry,
    handle: Handle,
) -> Router {
    let state = Arc::new(MetricsState {
        store,
        registry,
        handle,
        fold: Mutex::new((Indicators::new(), DomainMetrics::new())),
    });
    Router::new()
        .route("/metrics", get(scrape::<S>))
        .with_state(state)
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
    rt.bus_up.set(i64::from(!health.bus_failing.load(relaxed)));
    match m.store.count_timers().await {
        Ok(n) => rt
            .instances_with_timers
            .set(i64::try_from(n).unwrap_or(i64::MAX)),
        Err(e) => tracing::warn!(error = %e, "metrics: counting timer rows failed"),
    }
    let mut families = metrics::gather();
    {
        let mut guard = m.fold.lock().await;
        let (fold, domain) = &mut *guard;
        if let Err(e) = fold.catch_up(&m.store, MAX_RECORDS_PER_SCRAPE).await {
            tracing::warn!(error = %e, "metrics: reading the log for indicators failed");
        }
        domain.export(fold, &m.registry.current());
        families.extend(domain.gather());
    }
    let body = metrics::encode(&families);
    (StatusCode::OK, [(header::CONTENT_TYPE, CONTENT_TYPE)], body).into_response()
}
