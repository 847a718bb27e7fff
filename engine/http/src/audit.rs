//! `GET /v1/audit?tenant=&after=&limit=`: a tenant's audit trail, for its coordinators
//! (and for export: page with `after` = the last `id`); `?tenant=*`, for coordinators of
//! every tenant: the deployment's own entries, which name no tenant (pathway
//! publications, commands run on the server, requests of callers of every tenant that
//! named none).
//!
//! Entries are written by the route guard ([`crate::routes`]), one per guarded request,
//! through [`Trail`]: the entries of requests finishing while a write is in flight go
//! into the next write together (group commit), so concurrent requests share one
//! transaction (one fsync on SQLite) instead of paying one each. A request is answered
//! only once its own entry is stored.

use std::sync::{Arc, OnceLock};

use axum::Json;
use axum::extract::{Query, State};
use parcours_store::{AuditEntry, AuditFilter, AuditLog, EventStore};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::{mpsc, oneshot};

use crate::AppState;
use crate::auth::{Caller, EVERY_TENANT, Tenants};
use crate::error::ApiError;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct AuditQuery {
    tenant: Option<String>,
    after: Option<u64>,
    limit: Option<usize>,
}

pub(crate) async fn read<S: EventStore + AuditLog>(
    State(app): State<Arc<AppState<S>>>,
    caller: Caller,
    Query(q): Query<AuditQuery>,
) -> Result<Json<Value>, ApiError> {
    // `*`: the deployment's own entries (the route guard let only a caller of every
    // tenant name it).
    let tenant = match q.tenant {
        Some(t) if t == EVERY_TENANT && caller.principal.tenants == Tenants::All => None,
        Some(t) if t != EVERY_TENANT && caller.owns(&t) => Some(t),
        _ => {
            return Err(ApiError::bad_request(
                "missing_tenant",
                "give `?tenant=<cpts id>`, or `?tenant=*` (callers of every tenant) for the \
                 deployment's own entries: pathway publications, commands run on the server",
            ));
        }
    };
    let limit = crate::handlers::limit_of(q.limit);
    let mut entries = app
        .store
        .audit_entries(&AuditFilter {
            tenant,
            after: q.after.unwrap_or(0),
            // One more than asked: whether more remain.
            limit: limit + 1,
        })
        .await?;
    let next = crate::handlers::page(&mut entries, limit).map(|e| e.id);
    let out: Vec<Value> = entries
        .iter()
        .map(|s| {
            let e = &s.entry;
            json!({
                "id": s.id,
                "at": e.at.to_string(),
                "actor": e.actor,
                "action": e.action,
                "target": e.target,
                "tenant": e.tenant,
                "outcome": e.outcome.as_str(),
                "detail": e.detail,
            })
        })
        .collect();
    Ok(Json(json!({"entries": out, "next": next})))
}

/// Entries written in one transaction at most.
const MAX_GROUP: usize = 512;

type Waiter = oneshot::Sender<Result<(), String>>;

/// The audit trail's writer: one task per router appends the entries queued while its
/// previous write ran, in one transaction, and tells each request how its entry fared.
pub(crate) struct Trail<S> {
    store: S,
    queue: OnceLock<mpsc::UnboundedSender<(AuditEntry, Waiter)>>,
}

impl<S: AuditLog + Clone + 'static> Trail<S> {
    pub(crate) fn new(store: S) -> Self {
        Trail {
            store,
            queue: OnceLock::new(),
        }
    }

    /// Store `entry`; returns once it is committed (or the write failed: the reason).
    /// The writer task starts with the first entry (inside the server's runtime); it
    /// ends when the router is dropped.
    pub(crate) async fn write(&self, entry: AuditEntry) -> Result<(), String> {
        let queue = self.queue.get_or_init(|| {
            let (tx, rx) = mpsc::unbounded_channel();
            tokio::spawn(run(self.store.clone(), rx));
            tx
        });
        let (done, answer) = oneshot::channel();
        queue
            .send((entry, done))
            .map_err(|_| "the audit writer has stopped".to_string())?;
        answer
            .await
            .unwrap_or_else(|_| Err("the audit writer has stopped".into()))
    }
}

async fn run<S: AuditLog>(store: S, mut rx: mpsc::UnboundedReceiver<(AuditEntry, Waiter)>) {
    while let Some(first) = rx.recv().await {
        let mut entries = vec![first.0];
        let mut waiters = vec![first.1];
        while entries.len() < MAX_GROUP {
            match rx.try_recv() {
                Ok((entry, waiter)) => {
                    entries.push(entry);
                    waiters.push(waiter);
                }
                Err(_) => break,
            }
        }
        let outcome = store
            .audit(entries)
            .await
            .map(|_| ())
            .map_err(|e| e.to_string());
        for waiter in waiters {
            // A request that went away (client gone, timeout) no longer waits.
            let _ = waiter.send(outcome.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use std::future::Future;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use jiff::Timestamp;
    use parcours_store::{AuditOutcome, StoreError, StoredAudit};
    use parcours_store_sqlite::SqliteStore;

    use super::*;

    /// The SQLite store, counting its audit writes; the first write waits until every
    /// request has queued its entry, so the rest must go together.
    #[derive(Clone)]
    struct Counted {
        store: Arc<SqliteStore>,
        writes: Arc<AtomicUsize>,
        gate: Arc<tokio::sync::Semaphore>,
        fail: bool,
    }

    impl AuditLog for Counted {
        fn audit(
            &self,
            entries: Vec<AuditEntry>,
        ) -> impl Future<Output = Result<Vec<u64>, StoreError>> + Send {
            let this = self.clone();
            async move {
                if this.writes.fetch_add(1, Ordering::SeqCst) == 0 {
                    let _ = this.gate.acquire().await;
                }
                if this.fail {
                    return Err(StoreError::Backend("disk full".into()));
                }
                this.store.audit(entries).await
            }
        }

        fn audit_entries(
            &self,
            filter: &AuditFilter,
        ) -> impl Future<Output = Result<Vec<StoredAudit>, StoreError>> + Send {
            self.store.audit_entries(filter)
        }

        fn purge_audit(
            &self,
            before: Timestamp,
        ) -> impl Future<Output = Result<u64, StoreError>> + Send {
            self.store.purge_audit(before)
        }
    }

    fn entry(n: usize) -> AuditEntry {
        AuditEntry {
            at: Timestamp::UNIX_EPOCH,
            actor: format!("key:test/{n}"),
            action: "events.post".into(),
            target: None,
            tenant: Some("cpts-a".into()),
            outcome: AuditOutcome::Allowed,
            detail: Some("200".into()),
        }
    }

    async fn setup(fail: bool) -> (Counted, tempfile::TempDir) {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = SqliteStore::open(&dir.path().join("log.db"))
            .await
            .expect("store");
        let counted = Counted {
            store: Arc::new(store),
            writes: Arc::new(AtomicUsize::new(0)),
            gate: Arc::new(tokio::sync::Semaphore::new(0)),
            fail,
        };
        (counted, dir)
    }

    // A current-thread runtime (the default of `tokio::test`): tasks run in the order
    // they are woken, so the test knows what is queued when.
    #[tokio::test]
    async fn entries_queued_during_a_write_share_the_next_one_and_all_are_kept() {
        let (store, _dir) = setup(false).await;
        let trail = Arc::new(Trail::new(store.clone()));
        let mut requests = tokio::task::JoinSet::new();
        let first = trail.clone();
        requests.spawn(async move { first.write(entry(0)).await });
        // The writer takes entry 0 and waits at the gate.
        while store.writes.load(Ordering::SeqCst) == 0 {
            tokio::task::yield_now().await;
        }
        for n in 1..40 {
            let trail = trail.clone();
            requests.spawn(async move { trail.write(entry(n)).await });
        }
        // The 39 requests run (and queue their entries) before this task resumes.
        tokio::task::yield_now().await;
        store.gate.add_permits(1);
        while let Some(answer) = requests.join_next().await {
            assert_eq!(answer.expect("request task"), Ok(()));
        }
        assert_eq!(
            store.writes.load(Ordering::SeqCst),
            2,
            "entry 0 alone, then the 39 queued meanwhile in one write"
        );
        let kept = store
            .audit_entries(&AuditFilter {
                tenant: Some("cpts-a".into()),
                after: 0,
                limit: 100,
            })
            .await
            .expect("read");
        let mut actors: Vec<String> = kept.into_iter().map(|s| s.entry.actor).collect();
        actors.sort();
        let mut expected: Vec<String> = (0..40).map(|n| format!("key:test/{n}")).collect();
        expected.sort();
        assert_eq!(actors, expected);
    }

    #[tokio::test]
    async fn a_failed_write_fails_every_request_in_it() {
        let (store, _dir) = setup(true).await;
        store.gate.add_permits(1);
        let trail = Arc::new(Trail::new(store.clone()));
        let mut requests = tokio::task::JoinSet::new();
        for n in 0..5 {
            let trail = trail.clone();
            requests.spawn(async move { trail.write(entry(n)).await });
        }
        while let Some(answer) = requests.join_next().await {
            let err = answer.expect("request task").expect_err("the write failed");
            assert!(err.contains("disk full"), "{err}");
        }
    }
}
