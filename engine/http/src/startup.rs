//! The HTTP server of a process that is still starting.
//!
//! `parcours serve` binds its HTTP port first, then waits for PostgreSQL, NATS and
//! JetStream and opens the engine on the log, which can take minutes: the services
//! start with it, or the projections are rebuilt after an upgrade. Meanwhile the
//! [`Startup`] gate answers on that port:
//!
//! | request | answer while starting |
//! |---|---|
//! | `GET /healthz` | 200 `{"status": "starting", "starting": "<phase>"}`: the process is alive |
//! | `GET /readyz` | 503 `{"ready": false, "starting": "<phase>"}` |
//! | `GET /metrics` | the process's runtime metrics, `parcours_ready` 0 (the alert on it sees a process that does not start; `serve` also sets `parcours_store_up` or `parcours_bus_up` 0 while it waits for PostgreSQL or NATS) |
//! | anything else | 503 `{"error": {"code": "starting", …}}` with `Retry-After` |
//!
//! An orchestrator's liveness or start-up probe therefore does not restart a process that
//! waits for its services, an alert on `parcours_ready` sees one that never starts, and
//! the readiness probe keeps traffic away until
//! [`Startup::open`] hands every request to the API's router. Nothing is taken in before
//! that: the gate reads no body and answers no route but the probes.

use std::sync::{Arc, Mutex, OnceLock};

use axum::Router;
use axum::extract::Request;
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;
use tower::ServiceExt;

use crate::error::ApiError;

/// Seconds a client is told to wait before trying again while the process starts.
pub(crate) const RETRY_AFTER_SECS: &str = "5";

/// The gate in front of the API while the process starts; cheap to clone.
#[derive(Clone, Debug)]
pub struct Startup {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    /// What the process waits for (`waiting for PostgreSQL`, …).
    phase: Mutex<&'static str>,
    /// The API, once started.
    app: OnceLock<Router>,
    /// Whether the listener is TLS (the answers carry HSTS).
    tls: bool,
}

impl Startup {
    /// A gate in its first phase.
    pub fn new(phase: &'static str, tls: bool) -> Startup {
        Startup {
            inner: Arc::new(Inner {
                phase: Mutex::new(phase),
                app: OnceLock::new(),
                tls,
            }),
        }
    }

    /// What the process does now, shown by the probes.
    pub fn set_phase(&self, phase: &'static str) {
        *self.inner.phase.lock().unwrap_or_else(|p| p.into_inner()) = phase;
        tracing::info!(phase, "starting");
    }

    /// The phase the probes show.
    pub fn phase(&self) -> &'static str {
        *self.inner.phase.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether [`Startup::open`] was called.
    pub fn is_open(&self) -> bool {
        self.inner.app.get().is_some()
    }

    /// Started: from now on every request goes to `app`. Only the first call counts.
    pub fn open(&self, app: Router) {
        let _ = self.inner.app.set(app);
    }

    /// The router to serve: the gate, then the API once open.
    pub fn router(&self) -> Router {
        let gate = self.clone();
        Router::new().fallback(move |req: Request| {
            let gate = gate.clone();
            async move { gate.answer(req).await }
        })
    }

    async fn answer(&self, req: Request) -> Response {
        if let Some(app) = self.inner.app.get() {
            return match app.clone().oneshot(req).await {
                Ok(r) => r,
                Err(never) => match never {},
            };
        }
        let phase = self.phase();
        let get = req.method() == Method::GET || req.method() == Method::HEAD;
        let mut r = match req.uri().path() {
            "/healthz" if get => {
                axum::Json(json!({"status": "starting", "starting": phase})).into_response()
            }
            "/readyz" if get => (
                StatusCode::SERVICE_UNAVAILABLE,
                axum::Json(json!({"ready": false, "starting": phase})),
            )
                .into_response(),
            "/metrics" if get => {
                let m = parcours_runtime::metrics::metrics();
                m.ready.set(0);
                let body = parcours_runtime::metrics::encode(&parcours_runtime::metrics::gather());
                ([(header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)], body).into_response()
            }
            _ => ApiError {
                status: StatusCode::SERVICE_UNAVAILABLE,
                code: "starting",
                message: format!("parcours is starting ({phase}); try again shortly"),
                details: None,
            }
            .into_response(),
        };
        if r.status() == StatusCode::SERVICE_UNAVAILABLE {
            r.headers_mut().insert(
                header::RETRY_AFTER,
                HeaderValue::from_static(RETRY_AFTER_SECS),
            );
        }
        r.headers_mut()
            .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        crate::routes::set_security_headers(&mut r, self.inner.tls);
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use http_body_util::BodyExt;

    async fn call(router: &Router, method: Method, path: &str) -> (StatusCode, Response) {
        let req = Request::builder()
            .method(method)
            .uri(path)
            .body(Body::from("{\"specversion\":\"1.0\"}"))
            .unwrap();
        let r = router.clone().oneshot(req).await.unwrap();
        (r.status(), r)
    }

    async fn body(r: Response) -> serde_json::Value {
        let bytes = r.into_body().collect().await.unwrap().to_bytes();
        serde_json::from_slice(&bytes).unwrap()
    }

    #[tokio::test]
    async fn probes_say_what_the_process_waits_for_and_nothing_else_is_taken_in() {
        let gate = Startup::new("waiting for PostgreSQL", true);
        let router = gate.router();

        let (status, r) = call(&router, Method::GET, "/healthz").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(
            body(r).await,
            json!({"status": "starting", "starting": "waiting for PostgreSQL"})
        );

        gate.set_phase("waiting for NATS");
        let (status, r) = call(&router, Method::GET, "/readyz").await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(r.headers()[header::RETRY_AFTER], "5");
        assert!(
            r.headers().contains_key(header::STRICT_TRANSPORT_SECURITY),
            "a TLS listener's answers carry HSTS from the first"
        );
        assert_eq!(
            body(r).await,
            json!({"ready": false, "starting": "waiting for NATS"})
        );

        let (status, r) = call(&router, Method::POST, "/v1/events").await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        let b = body(r).await;
        assert_eq!(b["error"]["code"], "starting");
        assert!(
            b["error"]["message"]
                .as_str()
                .unwrap()
                .contains("waiting for NATS"),
            "{b}"
        );
        // Prometheus reads the process's metrics: not ready.
        let (status, r) = call(&router, Method::GET, "/metrics").await;
        assert_eq!(status, StatusCode::OK);
        let bytes = r.into_body().collect().await.unwrap().to_bytes();
        let text = String::from_utf8(bytes.to_vec()).unwrap();
        assert!(text.lines().any(|l| l == "parcours_ready 0"), "{text}");
        // A probe asked with another method is not a probe.
        let (status, _) = call(&router, Method::POST, "/healthz").await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(!gate.is_open());
    }

    #[tokio::test]
    async fn once_open_every_request_goes_to_the_api() {
        let gate = Startup::new("opening the log", false);
        let router = gate.router();
        gate.open(Router::new().route(
            "/healthz",
            axum::routing::get(|| async { axum::Json(json!({"status": "ok"})) }),
        ));
        let (status, r) = call(&router, Method::GET, "/healthz").await;
        assert_eq!(status, StatusCode::OK);
        assert!(!r.headers().contains_key(header::RETRY_AFTER));
        assert_eq!(body(r).await, json!({"status": "ok"}));
        // The API's own answers: its fallback, not the gate's 503.
        let (status, _) = call(&router, Method::POST, "/v1/events").await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert!(gate.is_open());
    }
}
