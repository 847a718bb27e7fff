//! The audit trail on PostgreSQL (`migrations/0004_audit.sql`).

use jiff::Timestamp;
use parcours_store::{AuditEntry, AuditFilter, AuditLog, AuditOutcome, StoreError, StoredAudit};
use sqlx::Row;

use crate::rows::{from_nanos, limit_of, nanos, to_i64, to_u64};
use crate::{PgStore, backend};

impl AuditLog for PgStore {
    async fn audit(&self, entries: Vec<AuditEntry>) -> Result<Vec<u64>, StoreError> {
        if entries.is_empty() {
            return Ok(Vec::new());
        }
        let mut at = Vec::with_capacity(entries.len());
        let mut actor = Vec::with_capacity(entries.len());
        let mut action = Vec::with_capacity(entries.len());
        let mut target = Vec::with_capacity(entries.len());
        let mut tenant = Vec::with_capacity(entries.len());
        let mut outcome = Vec::with_capacity(entries.len());
        let mut detail = Vec::with_capacity(entries.len());
        for e in entries {
            at.push(nanos(e.at)?);
            actor.push(e.actor);
            action.push(e.action);
            target.push(e.target);
            tenant.push(e.tenant);
            outcome.push(e.outcome.as_str().to_string());
            detail.push(e.detail);
        }
        let ids: Vec<i64> = sqlx::query_scalar(
            "INSERT INTO audit (at_ns, actor, action, target, tenant, outcome, detail) \
             SELECT * FROM UNNEST($1::bigint[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[]) \
             RETURNING id",
        )
        .bind(&at)
        .bind(&actor)
        .bind(&action)
        .bind(&target)
        .bind(&tenant)
        .bind(&outcome)
        .bind(&detail)
        .fetch_all(&self.pool)
        .await
        .map_err(backend)?;
        let mut ids = ids
            .into_iter()
            .map(|id| to_u64(id, "audit id"))
            .collect::<Result<Vec<_>, _>>()?;
        ids.sort_unstable();
        Ok(ids)
    }

    async fn audit_entries(&self, f: &AuditFilter) -> Result<Vec<StoredAudit>, StoreError> {
        // Two texts rather than `IS NOT DISTINCT FROM`, which no index serves.
        let sql = if f.tenant.is_some() {
            "SELECT id, at_ns, actor, action, target, tenant, outcome, detail FROM audit \
             WHERE tenant = $1 AND id > $2 ORDER BY id LIMIT $3"
        } else {
            "SELECT id, at_ns, actor, action, target, tenant, outcome, detail FROM audit \
             WHERE tenant IS NULL AND $1::text IS NULL AND id > $2 ORDER BY id LIMIT $3"
        };
        let rows = sqlx::query(sql)
            .bind(&f.tenant)
            .bind(to_i64(f.after, "after")?)
            .bind(limit_of(f.limit))
            .fetch_all(&self.pool)
            .await
            .map_err(backend)?;
        rows.iter()
            .map(|row| {
                let outcome: String = row.try_get("outcome").map_err(backend)?;
                Ok(StoredAudit {
                    id: to_u64(row.try_get("id").map_err(backend)?, "audit id")?,
                    entry: AuditEntry {
                        at: from_nanos(row.try_get("at_ns").map_err(backend)?, "at_ns")?,
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
        let removed: i64 = sqlx::query_scalar("SELECT parcours_audit_purge($1)")
            .bind(nanos(before)?)
            .fetch_one(&self.pool)
            .await
            .map_err(backend)?;
        to_u64(removed, "removed")
    }
}
