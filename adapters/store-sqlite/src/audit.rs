//! The audit trail on SQLite (`migrations/0005_audit.sql`).

use jiff::Timestamp;
use parcours_store::{AuditEntry, AuditFilter, AuditLog, AuditOutcome, StoreError, StoredAudit};
use sqlx::{QueryBuilder, Row, Sqlite};

use crate::{SqliteStore, backend, limit_of, to_i64, to_u64};

fn nanos(at: Timestamp) -> Result<i64, StoreError> {
    i64::try_from(at.as_nanosecond())
        .map_err(|_| StoreError::Backend(format!("audit time {at} out of range")))
}

impl AuditLog for SqliteStore {
    async fn audit(&self, entries: Vec<AuditEntry>) -> Result<Vec<u64>, StoreError> {
        if entries.is_empty() {
            return Ok(Vec::new());
        }
        let mut tx = self.pool.begin().await.map_err(backend)?;
        let mut ids = Vec::with_capacity(entries.len());
        for chunk in entries.chunks(100) {
            let mut q = QueryBuilder::<Sqlite>::new(
                "INSERT INTO audit (at_ns, actor, action, target, tenant, outcome, detail) ",
            );
            let mut rows = Vec::with_capacity(chunk.len());
            for e in chunk {
                rows.push((nanos(e.at)?, e));
            }
            q.push_values(rows, |mut b, (at, e)| {
                b.push_bind(at)
                    .push_bind(e.actor.clone())
                    .push_bind(e.action.clone())
                    .push_bind(e.target.clone())
                    .push_bind(e.tenant.clone())
                    .push_bind(e.outcome.as_str())
                    .push_bind(e.detail.clone());
            });
            q.push(" RETURNING id");
            let got: Vec<i64> = q
                .build_query_scalar()
                .fetch_all(&mut *tx)
                .await
                .map_err(backend)?;
            ids.extend(got.into_iter().map(to_u64));
        }
        tx.commit().await.map_err(backend)?;
        ids.sort_unstable();
        Ok(ids)
    }

    async fn audit_entries(&self, f: &AuditFilter) -> Result<Vec<StoredAudit>, StoreError> {
        let rows =
            // `IS`: equal, NULL included (the deployment's own entries); the index on
            // (tenant, id) serves it as it serves `=`.
            sqlx::query("SELECT * FROM audit WHERE tenant IS ? AND id > ? ORDER BY id LIMIT ?")
                .bind(&f.tenant)
                .bind(to_i64(f.after)?)
                .bind(limit_of(f.limit))
                .fetch_all(&self.pool)
                .await
                .map_err(backend)?;
        rows.iter()
            .map(|row| {
                let at: i64 = row.try_get("at_ns").map_err(backend)?;
                let outcome: String = row.try_get("outcome").map_err(backend)?;
                Ok(StoredAudit {
                    id: to_u64(row.try_get("id").map_err(backend)?),
                    entry: AuditEntry {
                        at: Timestamp::from_nanosecond(i128::from(at))
                            .map_err(|e| StoreError::Backend(format!("audit at_ns: {e}")))?,
                        actor: row.try_get("actor").map_err(backend)?,
                        action: row.try_get("action").map_err(backend)?,
                        target: row.try_get("target").map_err(backend)?,
                        tenant: row.try_get("tenant").map_err(backend)?,
                        outcome: AuditOutcome::parse(&outcome).ok_or_else(|| {
                            StoreError::Backend(format!("audit outcome `{outcome}`"))
                        })?,
                        detail: row.try_get("detail").map_err(backend)?,
                    },
                })
            })
            .collect()
    }

    async fn purge_audit(&self, before: Timestamp) -> Result<u64, StoreError> {
        let mut tx = self
            .pool
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(backend)?;
        sqlx::query("UPDATE audit_purge SET open = 1 WHERE only_row = 1")
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
        let removed = sqlx::query("DELETE FROM audit WHERE at_ns < ?")
            .bind(nanos(before)?)
            .execute(&mut *tx)
            .await
            .map_err(backend)?
            .rows_affected();
        sqlx::query("UPDATE audit_purge SET open = 0 WHERE only_row = 1")
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
        tx.commit().await.map_err(backend)?;
        Ok(removed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_trail_refuses_updates_and_deletes() {
        let dir = tempfile::tempdir().expect("dir");
        let store = SqliteStore::open(&dir.path().join("log.db"))
            .await
            .expect("store");
        store
            .audit(vec![AuditEntry {
                at: "2026-03-02T09:00:00Z".parse().expect("ts"),
                actor: "api-key:a/k1".into(),
                action: "instances.list".into(),
                target: None,
                tenant: Some("cpts-a".into()),
                outcome: AuditOutcome::Allowed,
                detail: None,
            }])
            .await
            .expect("audit");
        let update = sqlx::query("UPDATE audit SET actor = 'someone else'")
            .execute(&store.pool)
            .await;
        assert!(update.is_err(), "an update is refused");
        let delete = sqlx::query("DELETE FROM audit").execute(&store.pool).await;
        assert!(delete.is_err(), "a delete is refused");
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM audit")
            .fetch_one(&store.pool)
            .await
            .expect("count");
        assert_eq!(n, 1);
    }
}
