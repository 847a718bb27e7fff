//! parcours-vault: patient data encrypted at rest, and the right to erasure.
//!
//! parcours names patients by pseudonymous subject keys (`parcours-identity`), so its
//! log holds no name or national identifier. What remains identifying is kept
//! encrypted with a **per-patient data key**:
//!
//! - identifying fields of canonical events ([`vault::IDENTIFYING_FIELDS`]: visit
//!   numbers, result ids) become deterministic tokens (`enc1:…`, AES-256-SIV) at intake,
//!   before the core sees them: equality still works (a cancellation meets its
//!   discharge), replays stay byte-identical, and the core stays pure;
//! - refused input kept as dead letters (raw HL7 with names, INS, IPP, birth dates) is
//!   sealed with its tenant's dead-letter key by [`VaultStore`] before it is written.
//!
//! Data keys are stored **wrapped** by a tenant key held by a [`KeyProvider`]
//! ([`LocalKeyFile`] in embedded mode; a KMS or HSM implements the trait), in the
//! store's `patient_keys` table (`parcours_store::PatientKeys`). The master key rotates
//! without re-encrypting anything: earlier keys given to [`LocalKeyFile::with_previous`]
//! unwrap, and [`rewrap`] wraps the stored data keys again with the current one
//! ([`rotation`]).
//!
//! **Erasure** ([`Vault::erase`]) completes the subject keys named with every key the
//! log's identity links and merges join to them (`parcours_runtime::links::person_keys`:
//! an IPP's key and its INS's, whichever is named, and the keys merged into them — the
//! person's older records were tokenized with those keys' data keys), records
//! `patient.erased` (the subject key only) in the log for each, destroys their data keys
//! (crypto-shredding: their tokens can no longer be read, in the database, its backups
//! or snapshots), deletes the tenant's dead letters that name the patient, and scrubs
//! the deleted bytes from the database files. Their events stay in the log, so counts
//! and indicators do not change; subject keys stay stable, and an event arriving later
//! under one of them gets a new data key.

pub mod cipher;
mod intake;
pub mod provider;
pub mod rotation;
mod store;
pub mod vault;

pub use cipher::DataKey;
pub use intake::protecting;
pub use provider::{KeyProvider, LocalKeyFile};
pub use rotation::{RewrapReport, rewrap};
pub use store::VaultStore;
pub use vault::{ErasureReport, ErasureRequest, Vault};

/// Why the vault failed.
#[derive(Debug, thiserror::Error)]
pub enum VaultError {
    /// The key provider failed (key file, KMS).
    #[error("key provider: {0}")]
    Provider(String),
    /// The operating system's random source failed.
    #[error("random source: {0}")]
    Random(String),
    /// A ciphertext did not open (wrong key, tampered, or its key was destroyed).
    #[error("ciphertext does not open with this key")]
    Undecryptable,
    /// The store failed.
    #[error(transparent)]
    Store(#[from] parcours_store::StoreError),
    /// An event could not be (re)encoded.
    #[error("event encoding: {0}")]
    Json(String),
    /// The request is not one the vault can carry out.
    #[error("{0}")]
    Request(String),
}

impl VaultError {
    fn json(e: serde_json::Error) -> VaultError {
        VaultError::Json(e.to_string())
    }
}
