//! The vault: patient data keys (made on first use, wrapped by the provider, kept in
//! the store), identifying fields turned into tokens, dead letters sealed, and erasure.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex};

use jiff::Timestamp;
use parcours_core::events::Event;
use parcours_core::value::Value;
use parcours_runtime::codec;
use parcours_runtime::links::{self, PERSON_KEYS_MAX};
use parcours_store::{
    Appended, Codec, Commit, EventStore, NewRecord, PatientKey, PatientKeys, StoreError,
    StreamWrite,
};

use crate::VaultError;
use crate::cipher::{self, DataKey};
use crate::provider::KeyProvider;

/// Fields of canonical events that identify a patient to the hospital or lab that sent
/// them (visit numbers, result ids): stored as tokens of the patient's data key.
pub const IDENTIFYING_FIELDS: &[&str] = &["encounter_id", "observation_id"];

/// The fields of [`IDENTIFYING_FIELDS`] an event's payload declares and holds in clear
/// (text, not empty, not a token yet), by their index in its type's fields.
fn clear_identifiers(event: &Event) -> Vec<u16> {
    let ty = event.data.event_type();
    IDENTIFYING_FIELDS
        .iter()
        .filter_map(|f| ty.field_index(f))
        .filter(|i| {
            matches!(event.data.field(*i), Value::Str(s) if !s.is_empty() && !cipher::is_token(&s))
        })
        .collect()
}

/// The reserved subject whose data key seals a tenant's dead letters (not a subject key:
/// those start with `p-`).
pub const DEAD_LETTER_SUBJECT: &str = "~dead-letters";

/// The tenant name for dead letters whose tenant is unknown.
const NO_TENANT: &str = "~none";

/// Unwrapped keys kept in memory, at most this many (then the cache starts over).
const CACHE_MAX: usize = 100_000;

/// Patient data keys and what uses them. Cheap to clone.
pub struct Vault<P, S> {
    provider: Arc<P>,
    store: S,
    cache: Arc<Mutex<HashMap<(String, String), DataKey>>>,
}

impl<P, S: Clone> Clone for Vault<P, S> {
    fn clone(&self) -> Self {
        Vault {
            provider: self.provider.clone(),
            store: self.store.clone(),
            cache: self.cache.clone(),
        }
    }
}

impl<P, S> fmt::Debug for Vault<P, S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Vault(<keys redacted>)")
    }
}

/// What to erase: a patient of a tenant, by their subject keys (one per identifier the
/// sources used: the INS, each IPP; those the log's identity links and merges join to
/// them are erased too), and the strings that name them in raw messages (identifier
/// values, names) to find their dead letters.
#[derive(Clone, Default)]
pub struct ErasureRequest {
    /// The CPTS.
    pub tenant: String,
    /// The patient's subject keys, as named (see [`Vault::erase`] for those it adds).
    pub subjects: Vec<String>,
    /// Identifier values and names to look for in the tenant's dead letters.
    pub needles: Vec<String>,
    /// When (recorded in the log).
    pub at: Option<Timestamp>,
}

impl fmt::Debug for ErasureRequest {
    /// Shows the subject keys, never the identifiers or names.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ErasureRequest")
            .field("tenant", &self.tenant)
            .field("subjects", &self.subjects)
            .field("needles", &self.needles.len())
            .finish()
    }
}

/// What an erasure did (counts only).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ErasureReport {
    /// Subject keys erased: those named, and those the log's identity links and merges
    /// join to them.
    pub subjects: usize,
    /// Of [`subjects`](Self::subjects), those not named but found through identity links
    /// and merges.
    pub subjects_linked: usize,
    /// `patient.erased` records appended (one per subject key not erased before).
    pub recorded: usize,
    /// Data keys destroyed.
    pub keys_destroyed: usize,
    /// Dead letters deleted because they named the patient.
    pub dead_letters_deleted: u64,
}

impl<P: KeyProvider, S: PatientKeys + Clone> Vault<P, S> {
    /// A vault over a key provider and the store of wrapped keys.
    pub fn new(provider: P, store: S) -> Vault<P, S> {
        Vault {
            provider: Arc::new(provider),
            store,
            cache: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    /// The store behind it.
    pub fn store(&self) -> &S {
        &self.store
    }

    fn cached(&self, tenant: &str, subject: &str) -> Option<DataKey> {
        let cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        cache
            .get(&(tenant.to_string(), subject.to_string()))
            .cloned()
    }

    fn remember(&self, tenant: &str, subject: &str, key: &DataKey) {
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        if cache.len() >= CACHE_MAX {
            cache.clear();
        }
        cache.insert((tenant.to_string(), subject.to_string()), key.clone());
    }

    fn forget(&self, tenant: &str, subject: &str) {
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        cache.remove(&(tenant.to_string(), subject.to_string()));
    }

    /// A patient's data key, if they have one (`None` after an erasure).
    pub async fn existing_key(
        &self,
        tenant: &str,
        subject: &str,
    ) -> Result<Option<DataKey>, VaultError> {
        if let Some(k) = self.cached(tenant, subject) {
            return Ok(Some(k));
        }
        let Some(stored) = self.store.patient_key(tenant, subject).await? else {
            return Ok(None);
        };
        let key = self
            .provider
            .unwrap(tenant, subject, &stored.key_id, &stored.wrapped)
            .await?;
        self.remember(tenant, subject, &key);
        Ok(Some(key))
    }

    /// A patient's data key, made (and kept wrapped) on first use.
    pub async fn data_key(&self, tenant: &str, subject: &str) -> Result<DataKey, VaultError> {
        let mut keys = self.data_keys(&[(tenant, subject)]).await?;
        keys.pop()
            .ok_or_else(|| VaultError::Store(StoreError::Backend("no data key made".into())))
    }

    /// Several patients' data keys, in the order asked, made (and kept wrapped) on first
    /// use. Those not in memory are read with one query, and those that have none are
    /// made and stored together (one transaction): a burst of new patients costs two
    /// round trips and one durable write, not three round trips and a write each.
    pub async fn data_keys(&self, patients: &[(&str, &str)]) -> Result<Vec<DataKey>, VaultError> {
        let mut out: Vec<Option<DataKey>> =
            patients.iter().map(|(t, s)| self.cached(t, s)).collect();
        // The patients not in memory, once each.
        let mut missing: Vec<(&str, &str)> = Vec::new();
        for (p, k) in patients.iter().zip(&out) {
            if k.is_none() && !missing.contains(p) {
                missing.push(*p);
            }
        }
        if !missing.is_empty() {
            let stored = self.store.patient_keys(&missing).await?;
            let mut fresh = Vec::new();
            let mut made = Vec::new();
            for (&(tenant, subject), stored) in missing.iter().zip(stored) {
                match stored {
                    Some(stored) => {
                        let key = self
                            .provider
                            .unwrap(tenant, subject, &stored.key_id, &stored.wrapped)
                            .await?;
                        self.remember(tenant, subject, &key);
                    }
                    None => {
                        let key = DataKey::generate()?;
                        let (key_id, wrapped) = self.provider.wrap(tenant, subject, &key).await?;
                        fresh.push(PatientKey {
                            tenant: tenant.to_string(),
                            subject: subject.to_string(),
                            key_id,
                            wrapped,
                        });
                        made.push(key);
                    }
                }
            }
            if !fresh.is_empty() {
                let stored = self.store.create_patient_keys(fresh.clone()).await?;
                for ((mine, key), stored) in fresh.iter().zip(made).zip(stored) {
                    // Another writer may have made one first: theirs is the key.
                    let key = if stored == *mine {
                        key
                    } else {
                        self.provider
                            .unwrap(
                                &stored.tenant,
                                &stored.subject,
                                &stored.key_id,
                                &stored.wrapped,
                            )
                            .await?
                    };
                    self.remember(&mine.tenant, &mine.subject, &key);
                }
            }
            for ((tenant, subject), k) in patients.iter().zip(out.iter_mut()) {
                if k.is_none() {
                    *k = self.cached(tenant, subject);
                }
            }
        }
        out.into_iter()
            .map(|k| {
                k.ok_or_else(|| {
                    VaultError::Store(StoreError::Backend("a data key was not kept".into()))
                })
            })
            .collect()
    }

    /// Replace the identifying fields of events ([`IDENTIFYING_FIELDS`]) by tokens of
    /// their patient's data key. Idempotent (a token stays as it is); deterministic (a
    /// resent event gets the same bytes). The keys of the events' patients are fetched
    /// (or made) together ([`Vault::data_keys`]).
    pub async fn protect(&self, events: &mut [Event]) -> Result<(), VaultError> {
        // The events with identifying fields in clear, with those fields (read from the
        // typed payload: most events have none, and nothing is built for them).
        let clear: Vec<(usize, Vec<u16>)> = events
            .iter()
            .enumerate()
            .filter_map(|(i, event)| {
                let fields = clear_identifiers(event);
                (!fields.is_empty()).then_some((i, fields))
            })
            .collect();
        if clear.is_empty() {
            return Ok(());
        }
        let patients: Vec<(&str, &str)> = clear
            .iter()
            .map(|(i, _)| (events[*i].tenant.as_str(), events[*i].subject.as_str()))
            .collect();
        let keys = self.data_keys(&patients).await?;
        for ((i, fields), key) in clear.into_iter().zip(keys) {
            let Event {
                tenant,
                subject,
                data,
                ..
            } = &mut events[i];
            for field in fields {
                if let Some(s) = data.text_field_mut(field) {
                    *s = cipher::token(&key, tenant, subject, s);
                }
            }
        }
        Ok(())
    }

    /// The value behind a token of a patient (`None`: erased, or not a token).
    pub async fn reveal(
        &self,
        tenant: &str,
        subject: &str,
        token: &str,
    ) -> Result<Option<String>, VaultError> {
        Ok(self
            .existing_key(tenant, subject)
            .await?
            .and_then(|k| cipher::reveal(&k, tenant, subject, token)))
    }

    fn dead_letter_headers(tenant: &str) -> [&[u8]; 2] {
        [b"parcours dead letter v1", tenant.as_bytes()]
    }

    /// Seal a dead letter's bytes with its tenant's dead-letter key.
    pub async fn seal_dead_letter(
        &self,
        tenant: Option<&str>,
        payload: &[u8],
    ) -> Result<Vec<u8>, VaultError> {
        let tenant = tenant.unwrap_or(NO_TENANT);
        let key = self.data_key(tenant, DEAD_LETTER_SUBJECT).await?;
        cipher::seal(&key, &Self::dead_letter_headers(tenant), payload)
    }

    /// Open a dead letter's bytes (those kept before encryption existed come back as
    /// they are); `None` when they cannot be opened.
    pub async fn open_dead_letter(
        &self,
        tenant: Option<&str>,
        payload: &[u8],
    ) -> Result<Option<Vec<u8>>, VaultError> {
        if !cipher::is_sealed(payload) {
            return Ok(Some(payload.to_vec()));
        }
        let tenant = tenant.unwrap_or(NO_TENANT);
        let Some(key) = self.existing_key(tenant, DEAD_LETTER_SUBJECT).await? else {
            return Ok(None);
        };
        Ok(cipher::open(&key, &Self::dead_letter_headers(tenant), payload).ok())
    }
}

impl<P: KeyProvider, S: PatientKeys + EventStore + Clone> Vault<P, S> {
    /// Erase a patient: record `patient.erased` (the subject key only) in the log for
    /// each subject key, destroy their data keys, delete the tenant's dead letters that
    /// name them, and scrub the deleted bytes from the database files. Running it again
    /// is harmless (an erased key is recorded once).
    ///
    /// The keys named are completed with every key the log's identity links and merges
    /// join to them ([`links::person_keys`]: a local identifier's key and its INS's, both
    /// ways, the keys merged into them and, for merges the engine committed with the
    /// retired key's record, a retired key's survivor, transitively): the person's records stored
    /// under those keys were tokenized with their own data keys. A request whose keys
    /// reach more than [`PERSON_KEYS_MAX`] keys is refused before anything is erased
    /// (identities joined wrongly). After the erasure, an event under any of these keys
    /// starts a new data key, as for one key.
    pub async fn erase(&self, request: &ErasureRequest) -> Result<ErasureReport, VaultError> {
        let tenant = request.tenant.as_str();
        if request.subjects.is_empty() && request.needles.is_empty() {
            return Err(VaultError::Request(
                "nothing names the patient to erase".into(),
            ));
        }
        if request.subjects.iter().any(|s| !s.starts_with("p-")) {
            return Err(VaultError::Request(
                "a subject key starts with p- (reserved keys are not patients)".into(),
            ));
        }
        let person =
            links::person_keys(&self.store, tenant, &request.subjects, PERSON_KEYS_MAX).await?;
        if person.truncated {
            return Err(VaultError::Request(format!(
                "the identity links and merges of the keys named join more than \
                 {PERSON_KEYS_MAX} subject keys: identities the log joined wrongly, for \
                 identity vigilance to correct; nothing was erased"
            )));
        }
        // Keys found in the log that are not patients' (reserved) are left alone.
        let subjects: Vec<&String> = person.keys.iter().filter(|s| s.starts_with("p-")).collect();
        #[allow(clippy::disallowed_methods)]
        let at = request.at.unwrap_or_else(Timestamp::now);
        let mut report = ErasureReport {
            subjects: subjects.len(),
            subjects_linked: subjects.len().saturating_sub(person.asked),
            ..ErasureReport::default()
        };
        for subject in subjects {
            let had_key = self.store.patient_key(tenant, subject).await?.is_some();
            let stream = codec::erasure_stream(tenant, subject);
            let version = self.store.stream_version(&stream).await?;
            // Recorded first: a crash before the key is destroyed leaves a record and a
            // key, and the erasure is simply run again.
            if version == 0 || had_key {
                let payload = serde_json::to_vec(&serde_json::json!({ "subject": subject }))
                    .map_err(VaultError::json)?;
                let appended = self
                    .store
                    .append(Commit {
                        writes: vec![StreamWrite {
                            stream: stream.clone(),
                            expected_version: version,
                            records: vec![NewRecord {
                                id: format!("{stream}/{}", version + 1),
                                record_type: codec::PATIENT_ERASED.to_string(),
                                type_version: codec::PATIENT_ERASED_VERSION,
                                codec: Codec::Json,
                                tenant: tenant.to_string(),
                                subject: subject.to_string(),
                                occurred_at: at,
                                cause: None,
                                payload,
                            }],
                        }],
                        ..Commit::default()
                    })
                    .await?;
                if matches!(appended, Appended::Committed { .. }) {
                    report.recorded += 1;
                }
            }
            self.forget(tenant, subject);
            if self.store.erase_patient_key(tenant, subject).await? {
                report.keys_destroyed += 1;
            }
            self.forget(tenant, subject);
        }
        let needles: Vec<&[u8]> = request
            .needles
            .iter()
            .map(|n| n.trim().as_bytes())
            .filter(|n| n.len() >= 3)
            .collect();
        if !needles.is_empty() {
            let mut doomed = Vec::new();
            let mut after = 0;
            loop {
                let page = self.store.dead_letters(after, 500).await?;
                let Some(last) = page.last() else { break };
                after = last.id;
                for stored in page {
                    let l = &stored.letter;
                    if l.tenant.as_deref().is_some_and(|t| t != tenant) {
                        continue;
                    }
                    let opened = self
                        .open_dead_letter(l.tenant.as_deref(), &l.payload)
                        .await?
                        .unwrap_or_default();
                    let names = |hay: &[u8]| needles.iter().any(|n| contains(hay, n));
                    if names(&opened) || names(l.reason.as_bytes()) {
                        doomed.push(stored.id);
                    }
                }
            }
            report.dead_letters_deleted = self.store.delete_dead_letters(&doomed).await?;
        }
        self.store.scrub().await?;
        tracing::info!(
            tenant = %tenant,
            subjects = report.subjects,
            subjects_linked = report.subjects_linked,
            keys_destroyed = report.keys_destroyed,
            dead_letters_deleted = report.dead_letters_deleted,
            "patient erased"
        );
        Ok(report)
    }
}

/// Case-insensitive search of `needle` in `hay` (ASCII case: names arrive upper-cased).
fn contains(hay: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty()
        && hay
            .windows(needle.len())
            .any(|w| w.eq_ignore_ascii_case(needle))
}

#[cfg(test)]
mod tests {
    use parcours_core::events::{EventData, EventType};
    use parcours_core::value::Type;

    use super::*;

    /// An event of `ty` with every field given a value of its type, the identifying ones
    /// `ID-<name>`.
    fn full_event(ty: EventType) -> Event {
        let mut data = serde_json::Map::new();
        for f in ty.fields() {
            let value = match &f.ty {
                _ if IDENTIFYING_FIELDS.contains(&f.name) => format!("ID-{}", f.name).into(),
                Type::String => "x".into(),
                Type::Double => 1.5.into(),
                Type::Int => 1.into(),
                Type::Bool => true.into(),
                Type::Timestamp => "2026-11-02T10:00:00Z".into(),
                Type::Duration => "3d".into(),
                Type::List(_) => serde_json::json!([]),
                Type::Null | Type::Opaque => serde_json::json!({}),
            };
            data.insert(f.name.to_string(), value);
        }
        Event {
            id: "e1".into(),
            tenant: "cpts-a".into(),
            source: "test".into(),
            subject: "p-1".into(),
            occurred_at: "2026-11-02T10:00:00Z".parse().expect("instant"),
            recorded_at: None,
            data: EventData::from_json(ty, data.into())
                .unwrap_or_else(|e| panic!("{}: {e}", ty.as_str())),
        }
    }

    #[test]
    fn identifying_fields_are_found_in_the_typed_payload_as_the_wire_names_them() {
        let key = DataKey::generate().expect("key");
        let mut found = 0;
        for &ty in EventType::ALL {
            let mut event = full_event(ty);
            let json = serde_json::to_value(&event).expect("json");
            // What the wire shows in clear is exactly what the typed lookup finds.
            let on_the_wire: Vec<&str> = IDENTIFYING_FIELDS
                .iter()
                .copied()
                .filter(|f| json["data"][*f].as_str().is_some_and(|s| !s.is_empty()))
                .collect();
            let fields = clear_identifiers(&event);
            let names: Vec<&str> = fields
                .iter()
                .map(|i| ty.fields()[usize::from(*i)].name)
                .collect();
            assert_eq!(names, on_the_wire, "{}", ty.as_str());
            found += fields.len();
            // Once tokens, none is in clear any more; an empty one never was.
            for i in fields {
                let s = event.data.text_field_mut(i).expect("a text field");
                *s = cipher::token(&key, "cpts-a", "p-1", s);
            }
            assert!(clear_identifiers(&event).is_empty(), "{}", ty.as_str());
            for i in 0..ty.fields().len() as u16 {
                if let Some(s) = event.data.text_field_mut(i) {
                    s.clear();
                }
            }
            assert!(clear_identifiers(&event).is_empty(), "{}", ty.as_str());
        }
        assert!(
            found >= 8,
            "visit and result ids across the catalogue: {found}"
        );
    }
}
