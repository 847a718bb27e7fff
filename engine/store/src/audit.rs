//! The audit trail port: who read or changed what, apart from the domain log.
//!
//! An entry names an actor (a principal id: an API key's owner, a token's subject, a
//! command; never a patient identifier), an action (`instances.read`,
//! `task.outcome`, `pathway.publish` …), a target (an instance id, a task id, a
//! pseudonymous subject key, a pathway version), the tenant and the outcome. Entries are
//! append-only: backends refuse updates and deletes (triggers), except [`AuditLog::purge_audit`],
//! which removes entries older than the retention.

use std::future::Future;

use jiff::Timestamp;

use crate::StoreError;

/// How a request or command ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AuditOutcome {
    /// Done (or read) as asked.
    Allowed,
    /// Refused: not authenticated, not permitted, out of the caller's tenants.
    Denied,
    /// Failed: bad input, or an error of parcours.
    Error,
}

impl AuditOutcome {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            AuditOutcome::Allowed => "allowed",
            AuditOutcome::Denied => "denied",
            AuditOutcome::Error => "error",
        }
    }

    /// From the stored name.
    pub fn parse(s: &str) -> Option<AuditOutcome> {
        match s {
            "allowed" => Some(AuditOutcome::Allowed),
            "denied" => Some(AuditOutcome::Denied),
            "error" => Some(AuditOutcome::Error),
            _ => None,
        }
    }
}

/// One audit entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuditEntry {
    /// When.
    pub at: Timestamp,
    /// Who: a principal id (`api-key:chu-nord/2026-01`, `jwt:<issuer>#<sub>`, `cli:serve`).
    pub actor: String,
    /// What: a stable action name (`instances.list`, `task.outcome`, `pathway.publish`).
    pub action: String,
    /// On what: an instance id, task id, pseudonymous subject key, pathway version.
    pub target: Option<String>,
    /// The tenant concerned, when known.
    pub tenant: Option<String>,
    /// How it ended.
    pub outcome: AuditOutcome,
    /// A short detail (an HTTP status, a reason); never patient data.
    pub detail: Option<String>,
}

/// A stored entry: its id (increasing) and the entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredAudit {
    /// Increasing id.
    pub id: u64,
    /// The entry.
    pub entry: AuditEntry,
}

/// Which entries to read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuditFilter {
    /// Only this tenant's entries; `None`: the deployment's own, which name no tenant
    /// (pathway publications, commands run on the server).
    pub tenant: Option<String>,
    /// Entries after this id (paging; 0 for the first page).
    pub after: u64,
    /// At most this many, oldest first.
    pub limit: usize,
}

/// The audit-trail port.
pub trait AuditLog: Send + Sync {
    /// Append entries (one transaction); their ids.
    fn audit(
        &self,
        entries: Vec<AuditEntry>,
    ) -> impl Future<Output = Result<Vec<u64>, StoreError>> + Send;

    /// A tenant's entries (or the deployment's own: [`AuditFilter::tenant`]), oldest
    /// first.
    fn audit_entries(
        &self,
        filter: &AuditFilter,
    ) -> impl Future<Output = Result<Vec<StoredAudit>, StoreError>> + Send;

    /// Remove entries older than `before` (the retention); how many were removed. The
    /// only way an entry leaves the trail.
    fn purge_audit(
        &self,
        before: Timestamp,
    ) -> impl Future<Output = Result<u64, StoreError>> + Send;
}

impl<T: AuditLog> AuditLog for std::sync::Arc<T> {
    fn audit(
        &self,
        entries: Vec<AuditEntry>,
    ) -> impl Future<Output = Result<Vec<u64>, StoreError>> + Send {
        (**self).audit(entries)
    }

    fn audit_entries(
        &self,
        filter: &AuditFilter,
    ) -> impl Future<Output = Result<Vec<StoredAudit>, StoreError>> + Send {
        (**self).audit_entries(filter)
    }

    fn purge_audit(
        &self,
        before: Timestamp,
    ) -> impl Future<Output = Result<u64, StoreError>> + Send {
        (**self).purge_audit(before)
    }
}

/// The audit checks of the conformance suite (see [`crate::conformance`]).
pub mod checks {
    use std::sync::Arc;

    use jiff::{SignedDuration, Timestamp};

    use super::{AuditEntry, AuditFilter, AuditLog, AuditOutcome};

    fn entry(at: Timestamp, tenant: &str, action: &str, outcome: AuditOutcome) -> AuditEntry {
        AuditEntry {
            at,
            actor: "api-key:coordinator/k1".into(),
            action: action.into(),
            target: Some("instance-1".into()),
            tenant: Some(tenant.into()),
            outcome,
            detail: Some("200".into()),
        }
    }

    fn t(s: &str) -> Timestamp {
        s.parse().expect("timestamp")
    }

    /// Entries come back per tenant, oldest first, paged by id, as written.
    pub async fn audit_entries_are_kept_per_tenant_in_order<S: AuditLog>(store: Arc<S>) {
        let t0 = t("2026-03-02T09:00:00.123456789Z");
        let mut batch = Vec::new();
        for i in 0..5 {
            let tenant = if i % 2 == 0 { "cpts-a" } else { "cpts-b" };
            let outcome = if i == 3 {
                AuditOutcome::Denied
            } else {
                AuditOutcome::Allowed
            };
            batch.push(entry(
                t0 + SignedDuration::from_secs(i),
                tenant,
                "instances.read",
                outcome,
            ));
        }
        let ids = store.audit(batch.clone()).await.expect("audit");
        assert_eq!(ids.len(), 5);
        assert!(
            ids.windows(2).all(|w| w[0] < w[1]),
            "increasing ids {ids:?}"
        );
        let none = AuditEntry {
            tenant: None,
            target: None,
            detail: None,
            ..entry(t0, "x", "auth.refused", AuditOutcome::Error)
        };
        store.audit(vec![none.clone()]).await.expect("audit");
        let a = store
            .audit_entries(&AuditFilter {
                tenant: Some("cpts-a".into()),
                after: 0,
                limit: 100,
            })
            .await
            .expect("read");
        let got: Vec<&AuditEntry> = a.iter().map(|s| &s.entry).collect();
        let want: Vec<&AuditEntry> = batch.iter().step_by(2).collect();
        assert_eq!(got, want, "tenant a's entries, as written, in order");
        let b = store
            .audit_entries(&AuditFilter {
                tenant: Some("cpts-b".into()),
                after: 0,
                limit: 1,
            })
            .await
            .expect("read");
        assert_eq!(b.len(), 1);
        assert_eq!(b[0].entry, batch[1]);
        let b2 = store
            .audit_entries(&AuditFilter {
                tenant: Some("cpts-b".into()),
                after: b[0].id,
                limit: 10,
            })
            .await
            .expect("read");
        assert_eq!(b2.len(), 1);
        assert_eq!(b2[0].entry.outcome, AuditOutcome::Denied);
        assert!(
            store
                .audit_entries(&AuditFilter {
                    tenant: Some("cpts-c".into()),
                    after: 0,
                    limit: 10,
                })
                .await
                .expect("read")
                .is_empty()
        );
        // The deployment's own entries: those naming no tenant, and only them.
        let own = store
            .audit_entries(&AuditFilter {
                tenant: None,
                after: 0,
                limit: 10,
            })
            .await
            .expect("read");
        let own: Vec<&AuditEntry> = own.iter().map(|s| &s.entry).collect();
        assert_eq!(own, vec![&none]);
    }

    /// Only entries older than the retention leave, through the purge.
    pub async fn audit_purge_removes_only_old_entries<S: AuditLog>(store: Arc<S>) {
        let old = t("2025-01-01T00:00:00Z");
        let recent = t("2026-06-01T00:00:00Z");
        store
            .audit(vec![
                entry(old, "cpts-a", "tasks.list", AuditOutcome::Allowed),
                entry(recent, "cpts-a", "tasks.list", AuditOutcome::Allowed),
            ])
            .await
            .expect("audit");
        let removed = store
            .purge_audit(t("2026-01-01T00:00:00Z"))
            .await
            .expect("purge");
        assert_eq!(removed, 1);
        let left = store
            .audit_entries(&AuditFilter {
                tenant: Some("cpts-a".into()),
                after: 0,
                limit: 10,
            })
            .await
            .expect("read");
        assert_eq!(left.len(), 1);
        assert_eq!(left[0].entry.at, recent);
        // The trail still takes entries after a purge.
        store
            .audit(vec![entry(
                recent,
                "cpts-a",
                "tasks.list",
                AuditOutcome::Allowed,
            )])
            .await
            .expect("audit after purge");
    }
}
