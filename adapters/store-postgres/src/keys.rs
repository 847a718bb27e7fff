//! Patient data keys ([`PatientKeys`]) and what an erasure deletes. A deleted row stays
//! as a dead tuple until its table is vacuumed, so [`PatientKeys::scrub`] rewrites the
//! two tables an erasure touches (`VACUUM FULL`: new files, the old ones unlinked).

use std::collections::HashSet;

use parcours_store::{PatientKey, PatientKeys, Rewrapped, StoreError};
use sqlx::Row;

use crate::{PgStore, backend, rows::to_i64, sql};

impl PatientKeys for PgStore {
    async fn patient_key(
        &self,
        tenant: &str,
        subject: &str,
    ) -> Result<Option<PatientKey>, StoreError> {
        let row = sqlx::query(
            "SELECT key_id, wrapped FROM patient_keys WHERE tenant = $1 AND subject = $2",
        )
        .bind(tenant)
        .bind(subject)
        .fetch_optional(&self.pool)
        .await
        .map_err(backend)?;
        row.map(|row| {
            Ok(PatientKey {
                tenant: tenant.to_string(),
                subject: subject.to_string(),
                key_id: row.try_get("key_id").map_err(backend)?,
                wrapped: row.try_get("wrapped").map_err(backend)?,
            })
        })
        .transpose()
    }

    async fn create_patient_key(&self, key: PatientKey) -> Result<PatientKey, StoreError> {
        sqlx::query(
            "INSERT INTO patient_keys (tenant, subject, key_id, wrapped) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (tenant, subject) DO NOTHING",
        )
        .bind(&key.tenant)
        .bind(&key.subject)
        .bind(&key.key_id)
        .bind(&key.wrapped)
        .execute(&self.pool)
        .await
        .map_err(backend)?;
        self.patient_key(&key.tenant, &key.subject)
            .await?
            .ok_or_else(|| StoreError::Backend("a patient key vanished as it was made".into()))
    }

    async fn patient_keys(
        &self,
        patients: &[(&str, &str)],
    ) -> Result<Vec<Option<PatientKey>>, StoreError> {
        if patients.is_empty() {
            return Ok(Vec::new());
        }
        let (tenants, subjects): (Vec<&str>, Vec<&str>) = patients.iter().copied().unzip();
        let rows = sqlx::query(sql::PATIENT_KEYS)
            .bind(tenants)
            .bind(subjects)
            .fetch_all(&self.pool)
            .await
            .map_err(backend)?;
        let found = rows
            .iter()
            .map(patient_key_of)
            .collect::<Result<Vec<_>, StoreError>>()?;
        Ok(PatientKey::in_order(patients, found))
    }

    async fn create_patient_keys(
        &self,
        keys: Vec<PatientKey>,
    ) -> Result<Vec<PatientKey>, StoreError> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        // One statement, one commit: rows whose patient has a key (or comes earlier in
        // this batch) are skipped, and the keys stored are read back.
        let mut seen = HashSet::with_capacity(keys.len());
        let fresh: Vec<&PatientKey> = keys
            .iter()
            .filter(|k| seen.insert((k.tenant.as_str(), k.subject.as_str())))
            .collect();
        sqlx::query(
            "INSERT INTO patient_keys (tenant, subject, key_id, wrapped) \
             SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::bytea[]) \
             ON CONFLICT (tenant, subject) DO NOTHING",
        )
        .bind(fresh.iter().map(|k| k.tenant.as_str()).collect::<Vec<_>>())
        .bind(fresh.iter().map(|k| k.subject.as_str()).collect::<Vec<_>>())
        .bind(fresh.iter().map(|k| k.key_id.as_str()).collect::<Vec<_>>())
        .bind(
            fresh
                .iter()
                .map(|k| k.wrapped.as_slice())
                .collect::<Vec<_>>(),
        )
        .execute(&self.pool)
        .await
        .map_err(backend)?;
        let asked: Vec<(&str, &str)> = keys
            .iter()
            .map(|k| (k.tenant.as_str(), k.subject.as_str()))
            .collect();
        PatientKey::all_kept(self.patient_keys(&asked).await?)
    }

    async fn patient_key_ids(&self) -> Result<Vec<(String, u64)>, StoreError> {
        let rows = sqlx::query(
            "SELECT key_id, count(*) AS n FROM patient_keys GROUP BY key_id ORDER BY key_id",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(backend)?;
        rows.iter()
            .map(|row| {
                let n: i64 = row.try_get("n").map_err(backend)?;
                Ok((
                    row.try_get("key_id").map_err(backend)?,
                    u64::try_from(n).unwrap_or(0),
                ))
            })
            .collect()
    }

    async fn patient_keys_not_wrapped_by(
        &self,
        key_id: &str,
        after: Option<(&str, &str)>,
        limit: u32,
    ) -> Result<Vec<PatientKey>, StoreError> {
        let (tenant, subject) = after.unzip();
        sqlx::query(
            "SELECT tenant, subject, key_id, wrapped FROM patient_keys \
             WHERE key_id <> $1 AND ($2::text IS NULL OR (tenant, subject) > ($2, $3)) \
             ORDER BY tenant, subject LIMIT $4",
        )
        .bind(key_id)
        .bind(tenant)
        .bind(subject)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await
        .map_err(backend)?
        .iter()
        .map(patient_key_of)
        .collect()
    }

    async fn rewrap_patient_keys(&self, keys: &[Rewrapped]) -> Result<u64, StoreError> {
        if keys.is_empty() {
            return Ok(0);
        }
        // One statement: every row still as read is replaced, or none is.
        let done = sqlx::query(
            "UPDATE patient_keys p SET key_id = n.new_id, wrapped = n.new_wrapped \
             FROM UNNEST($1::text[], $2::text[], $3::text[], $4::bytea[], $5::text[], $6::bytea[]) \
               AS n(tenant, subject, old_id, old_wrapped, new_id, new_wrapped) \
             WHERE p.tenant = n.tenant AND p.subject = n.subject \
               AND p.key_id = n.old_id AND p.wrapped = n.old_wrapped",
        )
        .bind(
            keys.iter()
                .map(|k| k.read.tenant.as_str())
                .collect::<Vec<_>>(),
        )
        .bind(
            keys.iter()
                .map(|k| k.read.subject.as_str())
                .collect::<Vec<_>>(),
        )
        .bind(
            keys.iter()
                .map(|k| k.read.key_id.as_str())
                .collect::<Vec<_>>(),
        )
        .bind(
            keys.iter()
                .map(|k| k.read.wrapped.as_slice())
                .collect::<Vec<_>>(),
        )
        .bind(keys.iter().map(|k| k.key_id.as_str()).collect::<Vec<_>>())
        .bind(
            keys.iter()
                .map(|k| k.wrapped.as_slice())
                .collect::<Vec<_>>(),
        )
        .execute(&self.pool)
        .await
        .map_err(backend)?;
        Ok(done.rows_affected())
    }

    async fn erase_patient_key(&self, tenant: &str, subject: &str) -> Result<bool, StoreError> {
        let done = sqlx::query("DELETE FROM patient_keys WHERE tenant = $1 AND subject = $2")
            .bind(tenant)
            .bind(subject)
            .execute(&self.pool)
            .await
            .map_err(backend)?;
        Ok(done.rows_affected() > 0)
    }

    async fn delete_dead_letters(&self, ids: &[u64]) -> Result<u64, StoreError> {
        if ids.is_empty() {
            return Ok(0);
        }
        let ids = ids
            .iter()
            .map(|id| to_i64(*id, "dead letter id"))
            .collect::<Result<Vec<i64>, StoreError>>()?;
        let done = sqlx::query("DELETE FROM dead_letters WHERE id = ANY($1)")
            .bind(&ids)
            .execute(&self.pool)
            .await
            .map_err(backend)?;
        Ok(done.rows_affected())
    }

    async fn scrub(&self) -> Result<(), StoreError> {
        sqlx::query("VACUUM (FULL) patient_keys, dead_letters")
            .execute(&self.pool)
            .await
            .map_err(backend)?;
        Ok(())
    }
}

/// A `patient_keys` row read whole.
fn patient_key_of(row: &sqlx::postgres::PgRow) -> Result<PatientKey, StoreError> {
    Ok(PatientKey {
        tenant: row.try_get("tenant").map_err(backend)?,
        subject: row.try_get("subject").map_err(backend)?,
        key_id: row.try_get("key_id").map_err(backend)?,
        wrapped: row.try_get("wrapped").map_err(backend)?,
    })
}
