//! Per-patient data keys, kept wrapped (encrypted by a tenant key the store never sees),
//! and what erasing a patient removes besides them.
//!
//! The store keeps one [`PatientKey`] per (tenant, subject key). Destroying it is the
//! crypto-shredding of everything encrypted with it: the records stay in the log (for
//! integrity and counting) but their identifying content can no longer be read, in this
//! database, its backups or its snapshots. See the `parcours-vault` crate.

use std::future::Future;

use crate::StoreError;

/// A patient's data key, wrapped by its tenant's key.
#[derive(Clone, PartialEq, Eq)]
pub struct PatientKey {
    /// The CPTS.
    pub tenant: String,
    /// Pseudonymous patient key.
    pub subject: String,
    /// Which tenant key wrapped it (a key provider's name for it; rotation keeps old ids
    /// readable).
    pub key_id: String,
    /// The data key, encrypted by the tenant key.
    pub wrapped: Vec<u8>,
}

impl PatientKey {
    /// Keys found by a query for several patients, put in the order asked: `None` for a
    /// patient without one, the same key twice for a patient asked twice (what
    /// [`PatientKeys::patient_keys`] returns).
    pub fn in_order(asked: &[(&str, &str)], found: Vec<PatientKey>) -> Vec<Option<PatientKey>> {
        let found: std::collections::HashMap<(String, String), PatientKey> = found
            .into_iter()
            .map(|k| ((k.tenant.clone(), k.subject.clone()), k))
            .collect();
        asked
            .iter()
            .map(|(t, s)| found.get(&((*t).to_string(), (*s).to_string())).cloned())
            .collect()
    }

    /// The keys read back after storing them: every one must be there.
    pub fn all_kept(read: Vec<Option<PatientKey>>) -> Result<Vec<PatientKey>, StoreError> {
        read.into_iter()
            .map(|k| {
                k.ok_or_else(|| StoreError::Backend("a patient key vanished as it was made".into()))
            })
            .collect()
    }
}

impl std::fmt::Debug for PatientKey {
    /// Shows whose key it is, never the (wrapped) key.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PatientKey")
            .field("tenant", &self.tenant)
            .field("subject", &self.subject)
            .field("key_id", &self.key_id)
            .field("wrapped", &format_args!("<{} bytes>", self.wrapped.len()))
            .finish()
    }
}

/// A patient's data key wrapped again by another tenant key (a rotation of the key
/// provider's keys): the row as it was read, and what replaces it. The data key itself
/// does not change, so nothing it encrypted does.
#[derive(Clone, PartialEq, Eq)]
pub struct Rewrapped {
    /// The key as read: the row is replaced only while it still holds this key id and
    /// these bytes.
    pub read: PatientKey,
    /// The tenant key that wraps it now.
    pub key_id: String,
    /// The same data key, wrapped by that tenant key.
    pub wrapped: Vec<u8>,
}

impl std::fmt::Debug for Rewrapped {
    /// Shows whose key it is and by what it is wrapped, never the bytes.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rewrapped")
            .field("read", &self.read)
            .field("key_id", &self.key_id)
            .finish_non_exhaustive()
    }
}

/// Where wrapped patient data keys live, and the erasure of what they protect.
pub trait PatientKeys: Send + Sync {
    /// A patient's wrapped data key, if they have one.
    fn patient_key(
        &self,
        tenant: &str,
        subject: &str,
    ) -> impl Future<Output = Result<Option<PatientKey>, StoreError>> + Send;

    /// Keep a new data key unless the patient already has one; returns the key that is
    /// stored (the existing one when two writers race).
    fn create_patient_key(
        &self,
        key: PatientKey,
    ) -> impl Future<Output = Result<PatientKey, StoreError>> + Send;

    /// Several patients' wrapped data keys, in the order asked (`None` for a patient
    /// without one; a patient asked twice gets two answers). One round trip where the
    /// backend can: a batch of new patients (a burst of discharges) costs one query, not
    /// one per patient.
    fn patient_keys(
        &self,
        patients: &[(&str, &str)],
    ) -> impl Future<Output = Result<Vec<Option<PatientKey>>, StoreError>> + Send {
        async move {
            let mut out = Vec::with_capacity(patients.len());
            for (tenant, subject) in patients {
                out.push(self.patient_key(tenant, subject).await?);
            }
            Ok(out)
        }
    }

    /// Keep several new data keys, each unless its patient already has one, in one
    /// transaction where the backend can (one durable write for a batch of new
    /// patients); returns the keys stored, in the order given (the existing one where
    /// another writer was first; the first given where a patient comes twice).
    fn create_patient_keys(
        &self,
        keys: Vec<PatientKey>,
    ) -> impl Future<Output = Result<Vec<PatientKey>, StoreError>> + Send {
        async move {
            let mut out = Vec::with_capacity(keys.len());
            for key in keys {
                out.push(self.create_patient_key(key).await?);
            }
            Ok(out)
        }
    }

    /// How many data keys each tenant key wraps: (key id, keys), in key id order.
    fn patient_key_ids(
        &self,
    ) -> impl Future<Output = Result<Vec<(String, u64)>, StoreError>> + Send;

    /// Up to `limit` data keys wrapped by another tenant key than `key_id`, in (tenant,
    /// subject) order after `after`: what a rotation has still to wrap again, a page at
    /// a time.
    fn patient_keys_not_wrapped_by(
        &self,
        key_id: &str,
        after: Option<(&str, &str)>,
        limit: u32,
    ) -> impl Future<Output = Result<Vec<PatientKey>, StoreError>> + Send;

    /// Replace each key whose row still holds what was read (same tenant key id and
    /// bytes) by its new wrapping, in one transaction; a key erased or replaced meanwhile
    /// is left as it is. Returns how many were replaced.
    fn rewrap_patient_keys(
        &self,
        keys: &[Rewrapped],
    ) -> impl Future<Output = Result<u64, StoreError>> + Send;

    /// Destroy a patient's data key; `true` when there was one.
    fn erase_patient_key(
        &self,
        tenant: &str,
        subject: &str,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// Delete dead letters by id (those that name an erased patient); how many went.
    fn delete_dead_letters(
        &self,
        ids: &[u64],
    ) -> impl Future<Output = Result<u64, StoreError>> + Send;

    /// Make deleted rows unrecoverable from the database files: after an erasure, no
    /// free page, journal or dead tuple keeps the bytes of a destroyed key or deleted
    /// dead letter (SQLite: secure delete and a truncating WAL checkpoint; PostgreSQL:
    /// the two tables rewritten).
    fn scrub(&self) -> impl Future<Output = Result<(), StoreError>> + Send;
}
