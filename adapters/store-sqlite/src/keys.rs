//! Patient data keys ([`PatientKeys`]) and what an erasure deletes, made unrecoverable
//! from the file: deletions run with `secure_delete` (SQLite overwrites the freed bytes)
//! and end with a truncating WAL checkpoint (no old page image stays in `-wal`).

use parcours_store::{PatientKey, PatientKeys, Rewrapped, StoreError};
use sqlx::{QueryBuilder, Row, Sqlite};

use crate::{ROWS_PER_STATEMENT, SqliteStore, backend, push_patients_in, to_i64};

impl SqliteStore {
    /// A pool connection that overwrites what it deletes or replaces (`secure_delete`),
    /// rather than leaving the bytes in a free page.
    async fn secure_delete_connection(
        &self,
    ) -> Result<sqlx::pool::PoolConnection<Sqlite>, StoreError> {
        let mut conn = self.pool.acquire().await.map_err(backend)?;
        sqlx::query("PRAGMA secure_delete = ON")
            .execute(&mut *conn)
            .await
            .map_err(backend)?;
        Ok(conn)
    }
}

impl PatientKeys for SqliteStore {
    async fn patient_key(
        &self,
        tenant: &str,
        subject: &str,
    ) -> Result<Option<PatientKey>, StoreError> {
        let row = sqlx::query(
            "SELECT key_id, wrapped FROM patient_keys WHERE tenant = ? AND subject = ?",
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
            "INSERT INTO patient_keys (tenant, subject, key_id, wrapped) VALUES (?, ?, ?, ?) \
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
        let mut found = Vec::with_capacity(patients.len());
        // Two variables a patient.
        for chunk in patients.chunks(ROWS_PER_STATEMENT / 2) {
            let mut q = QueryBuilder::<Sqlite>::new(
                "SELECT tenant, subject, key_id, wrapped FROM patient_keys WHERE ",
            );
            push_patients_in(&mut q, chunk);
            for row in q.build().fetch_all(&self.pool).await.map_err(backend)? {
                found.push(patient_key_of(&row)?);
            }
        }
        Ok(PatientKey::in_order(patients, found))
    }

    async fn create_patient_keys(
        &self,
        keys: Vec<PatientKey>,
    ) -> Result<Vec<PatientKey>, StoreError> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        // One transaction (one commit): rows whose patient has a key (or comes earlier
        // in this batch) are skipped, and the keys stored are read back.
        let mut tx = self.pool.begin().await.map_err(backend)?;
        // Four variables a key.
        for chunk in keys.chunks(ROWS_PER_STATEMENT / 4) {
            let mut q = QueryBuilder::<Sqlite>::new(
                "INSERT INTO patient_keys (tenant, subject, key_id, wrapped) ",
            );
            q.push_values(chunk, |mut row, k| {
                row.push_bind(&k.tenant)
                    .push_bind(&k.subject)
                    .push_bind(&k.key_id)
                    .push_bind(&k.wrapped);
            });
            q.push(" ON CONFLICT (tenant, subject) DO NOTHING");
            q.build().execute(&mut *tx).await.map_err(backend)?;
        }
        tx.commit().await.map_err(backend)?;
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
        let mut q = QueryBuilder::<Sqlite>::new(
            "SELECT tenant, subject, key_id, wrapped FROM patient_keys WHERE key_id <> ",
        );
        q.push_bind(key_id);
        if let Some((tenant, subject)) = after {
            q.push(" AND (tenant, subject) > (")
                .push_bind(tenant)
                .push(", ")
                .push_bind(subject)
                .push(")");
        }
        q.push(" ORDER BY tenant, subject LIMIT ")
            .push_bind(i64::from(limit));
        q.build()
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
        // The old wrapping's bytes are overwritten, not left in a free page.
        let mut conn = self.secure_delete_connection().await?;
        let mut tx = sqlx::Connection::begin(&mut *conn).await.map_err(backend)?;
        let mut replaced = 0;
        for k in keys {
            replaced += sqlx::query(
                "UPDATE patient_keys SET key_id = ?, wrapped = ? \
                 WHERE tenant = ? AND subject = ? AND key_id = ? AND wrapped = ?",
            )
            .bind(&k.key_id)
            .bind(&k.wrapped)
            .bind(&k.read.tenant)
            .bind(&k.read.subject)
            .bind(&k.read.key_id)
            .bind(&k.read.wrapped)
            .execute(&mut *tx)
            .await
            .map_err(backend)?
            .rows_affected();
        }
        tx.commit().await.map_err(backend)?;
        Ok(replaced)
    }

    async fn erase_patient_key(&self, tenant: &str, subject: &str) -> Result<bool, StoreError> {
        let mut conn = self.secure_delete_connection().await?;
        let done = sqlx::query("DELETE FROM patient_keys WHERE tenant = ? AND subject = ?")
            .bind(tenant)
            .bind(subject)
            .execute(&mut *conn)
            .await
            .map_err(backend)?;
        Ok(done.rows_affected() > 0)
    }

    async fn delete_dead_letters(&self, ids: &[u64]) -> Result<u64, StoreError> {
        if ids.is_empty() {
            return Ok(0);
        }
        let mut conn = self.secure_delete_connection().await?;
        let mut deleted = 0;
        for chunk in ids.chunks(crate::ROWS_PER_STATEMENT) {
            let mut q: QueryBuilder<Sqlite> =
                QueryBuilder::new("DELETE FROM dead_letters WHERE id IN (");
            let mut list = q.separated(", ");
            for id in chunk {
                list.push_bind(to_i64(*id)?);
            }
            q.push(")");
            deleted += q
                .build()
                .execute(&mut *conn)
                .await
                .map_err(backend)?
                .rows_affected();
        }
        Ok(deleted)
    }

    async fn scrub(&self) -> Result<(), StoreError> {
        // Every page an erasure changed goes back into the file (overwritten there by
        // secure_delete), then the WAL is emptied. A reader in the middle of a
        // transaction can hold the checkpoint back: try again a few times.
        for _ in 0..50 {
            let row = sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)")
                .fetch_one(&self.pool)
                .await
                .map_err(backend)?;
            let busy: i64 = row.try_get(0).map_err(backend)?;
            if busy == 0 {
                return Ok(());
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        Err(StoreError::Backend(
            "the WAL could not be emptied after an erasure (readers kept it busy); run it again"
                .into(),
        ))
    }
}

/// A `patient_keys` row read whole.
fn patient_key_of(row: &sqlx::sqlite::SqliteRow) -> Result<PatientKey, StoreError> {
    Ok(PatientKey {
        tenant: row.try_get("tenant").map_err(backend)?,
        subject: row.try_get("subject").map_err(backend)?,
        key_id: row.try_get("key_id").map_err(backend)?,
        wrapped: row.try_get("wrapped").map_err(backend)?,
    })
}
