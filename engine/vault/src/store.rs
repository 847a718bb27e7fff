//! [`VaultStore`]: an event store whose dead letters are sealed before they are written.
//!
//! Every front (HTTP, FHIR, MLLP, the runtime) keeps refused input through
//! [`EventStore::dead_letter`]; wrapping the store seals the raw bytes (names, INS, IPP,
//! birth dates of a refused HL7 message) with the tenant's dead-letter key before they
//! reach a table, a WAL or a backup. Reading them back opens them. Everything else is
//! passed through unchanged.

use jiff::Timestamp;
use parcours_store::{
    Appended, AuditEntry, AuditFilter, AuditLog, Commit, DeadLetter, DeadLetterFilter, EventStore,
    PatientKey, PatientKeys, Rewrapped, StoreError, StoredAudit, StoredDeadLetter,
};

use crate::provider::KeyProvider;
use crate::vault::Vault;

/// A store that seals dead letters (see the module docs). Cheap to clone.
#[derive(Clone, Debug)]
pub struct VaultStore<S, P> {
    inner: S,
    vault: Vault<P, S>,
}

impl<S: EventStore + PatientKeys + Clone, P: KeyProvider> VaultStore<S, P> {
    /// Wrap a store; its keys are wrapped by `provider`.
    pub fn new(inner: S, provider: P) -> VaultStore<S, P> {
        let vault = Vault::new(provider, inner.clone());
        VaultStore { inner, vault }
    }

    /// The vault (data keys, tokens, erasure).
    pub fn vault(&self) -> &Vault<P, S> {
        &self.vault
    }

    /// The wrapped store.
    pub fn inner(&self) -> &S {
        &self.inner
    }
}

impl<S: EventStore + PatientKeys + Clone, P: KeyProvider> VaultStore<S, P> {
    /// A stored dead letter's bytes opened in place (those whose key was destroyed by
    /// an erasure come back empty, the reason saying so).
    async fn open(&self, stored: &mut StoredDeadLetter) -> Result<(), StoreError> {
        let l = &mut stored.letter;
        match self
            .vault
            .open_dead_letter(l.tenant.as_deref(), &l.payload)
            .await
            .map_err(vault_error)?
        {
            Some(opened) => l.payload = opened,
            None => {
                l.payload = Vec::new();
                l.reason
                    .push_str(" (content unreadable: its key was destroyed)");
            }
        }
        Ok(())
    }
}

fn vault_error(e: crate::VaultError) -> StoreError {
    StoreError::Backend(format!("vault: {e}"))
}

impl<S, P> EventStore for VaultStore<S, P>
where
    S: EventStore + PatientKeys + Clone,
    P: KeyProvider,
{
    async fn append(&self, commit: Commit) -> Result<Appended, StoreError> {
        self.inner.append(commit).await
    }

    fn concurrent_appends(&self) -> usize {
        self.inner.concurrent_appends()
    }

    fn steady_appends(&self) -> usize {
        self.inner.steady_appends()
    }

    async fn dead_letter(&self, mut letter: DeadLetter) -> Result<u64, StoreError> {
        letter.payload = self
            .vault
            .seal_dead_letter(letter.tenant.as_deref(), &letter.payload)
            .await
            .map_err(vault_error)?;
        self.inner.dead_letter(letter).await
    }

    async fn dead_letters(
        &self,
        after: u64,
        limit: usize,
    ) -> Result<Vec<StoredDeadLetter>, StoreError> {
        let mut letters = self.inner.dead_letters(after, limit).await?;
        for stored in &mut letters {
            self.open(stored).await?;
        }
        Ok(letters)
    }

    async fn list_dead_letters(
        &self,
        filter: &DeadLetterFilter,
    ) -> Result<Vec<StoredDeadLetter>, StoreError> {
        let mut letters = self.inner.list_dead_letters(filter).await?;
        for stored in &mut letters {
            self.open(stored).await?;
        }
        Ok(letters)
    }

    async fn dead_letter_by_id(&self, id: u64) -> Result<Option<StoredDeadLetter>, StoreError> {
        let mut letter = self.inner.dead_letter_by_id(id).await?;
        if let Some(stored) = &mut letter {
            self.open(stored).await?;
        }
        Ok(letter)
    }

    parcours_store::delegate_event_store!(inner: reads, projections);
}

impl<S, P> PatientKeys for VaultStore<S, P>
where
    S: EventStore + PatientKeys + Clone,
    P: KeyProvider,
{
    async fn patient_key(
        &self,
        tenant: &str,
        subject: &str,
    ) -> Result<Option<PatientKey>, StoreError> {
        self.inner.patient_key(tenant, subject).await
    }

    async fn create_patient_key(&self, key: PatientKey) -> Result<PatientKey, StoreError> {
        self.inner.create_patient_key(key).await
    }

    async fn patient_keys(
        &self,
        patients: &[(&str, &str)],
    ) -> Result<Vec<Option<PatientKey>>, StoreError> {
        self.inner.patient_keys(patients).await
    }

    async fn create_patient_keys(
        &self,
        keys: Vec<PatientKey>,
    ) -> Result<Vec<PatientKey>, StoreError> {
        self.inner.create_patient_keys(keys).await
    }

    async fn patient_key_ids(&self) -> Result<Vec<(String, u64)>, StoreError> {
        self.inner.patient_key_ids().await
    }

    async fn patient_keys_not_wrapped_by(
        &self,
        key_id: &str,
        after: Option<(&str, &str)>,
        limit: u32,
    ) -> Result<Vec<PatientKey>, StoreError> {
        self.inner
            .patient_keys_not_wrapped_by(key_id, after, limit)
            .await
    }

    async fn rewrap_patient_keys(&self, keys: &[Rewrapped]) -> Result<u64, StoreError> {
        self.inner.rewrap_patient_keys(keys).await
    }

    async fn erase_patient_key(&self, tenant: &str, subject: &str) -> Result<bool, StoreError> {
        self.inner.erase_patient_key(tenant, subject).await
    }

    async fn delete_dead_letters(&self, ids: &[u64]) -> Result<u64, StoreError> {
        self.inner.delete_dead_letters(ids).await
    }

    async fn scrub(&self) -> Result<(), StoreError> {
        self.inner.scrub().await
    }
}

impl<S, P> AuditLog for VaultStore<S, P>
where
    S: AuditLog,
    P: Send + Sync,
{
    async fn audit(&self, entries: Vec<AuditEntry>) -> Result<Vec<u64>, StoreError> {
        self.inner.audit(entries).await
    }

    async fn audit_entries(&self, filter: &AuditFilter) -> Result<Vec<StoredAudit>, StoreError> {
        self.inner.audit_entries(filter).await
    }

    async fn purge_audit(&self, before: Timestamp) -> Result<u64, StoreError> {
        self.inner.purge_audit(before).await
    }
}
