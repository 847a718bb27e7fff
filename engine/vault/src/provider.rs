//! Key providers: who holds the tenant keys that wrap patient data keys.
//!
//! parcours never stores a tenant key. It asks a [`KeyProvider`] to wrap a new data key
//! (the wrapped bytes go into the log's `patient_keys` table) and to unwrap it when the
//! patient's data is read. [`LocalKeyFile`] is the embedded mode's provider: one master
//! key in a file outside the database, one tenant key derived from it per tenant. A KMS
//! or an HSM implements the same trait (wrap and unwrap become calls to it; the tenant
//! key never leaves it).

use std::fmt;
use std::future::Future;
use std::path::Path;

use hkdf::Hkdf;
use sha2::{Digest, Sha256};

use crate::VaultError;
use crate::cipher::{self, DataKey, KEY_LEN};

/// Wraps and unwraps patient data keys with tenant keys it holds.
pub trait KeyProvider: Send + Sync + 'static {
    /// Wrap a data key for a patient of a tenant; returns the id of the tenant key used
    /// (kept with the wrapped key, so rotated keys still unwrap) and the wrapped bytes.
    fn wrap(
        &self,
        tenant: &str,
        subject: &str,
        key: &DataKey,
    ) -> impl Future<Output = Result<(String, Vec<u8>), VaultError>> + Send;

    /// Unwrap what [`KeyProvider::wrap`] made for this tenant and subject.
    fn unwrap(
        &self,
        tenant: &str,
        subject: &str,
        key_id: &str,
        wrapped: &[u8],
    ) -> impl Future<Output = Result<DataKey, VaultError>> + Send;
}

/// The embedded provider: a 32-byte master key in a file (mode 0600, outside the
/// database; created on first start), tenant keys derived by HKDF-SHA-256, wrapping by
/// AES-256-SIV bound to tenant and subject. Its `Debug` never shows the key.
///
/// **Rotation**: [`LocalKeyFile::with_previous`] gives it earlier master keys, which
/// only unwrap (a data key names the master key that wrapped it); new data keys are
/// wrapped by the current one, and [`crate::rotation::rewrap`] wraps the stored ones
/// again, after which the earlier keys are no longer needed by the database.
#[derive(Clone)]
pub struct LocalKeyFile {
    master: Vec<u8>,
    key_id: String,
    previous: Vec<LocalKeyFile>,
}

impl fmt::Debug for LocalKeyFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LocalKeyFile")
            .field("key_id", &self.key_id)
            .field("previous", &self.previous_key_ids())
            .finish_non_exhaustive()
    }
}

/// Bytes of a master key file made by [`LocalKeyFile::load_or_create`].
const MASTER_LEN: usize = 32;

impl LocalKeyFile {
    /// A provider with this master key (at least 32 bytes).
    pub fn from_key(master: &[u8]) -> Result<LocalKeyFile, VaultError> {
        if master.len() < MASTER_LEN {
            return Err(VaultError::Provider(format!(
                "the master key holds {} bytes; at least {MASTER_LEN} are needed",
                master.len()
            )));
        }
        // The id names the master key without revealing it: a fingerprint.
        let digest = Sha256::digest([b"parcours master key id\0".as_slice(), master].concat());
        let hex: String = digest[..6].iter().map(|b| format!("{b:02x}")).collect();
        Ok(LocalKeyFile {
            master: master.to_vec(),
            key_id: format!("local:{hex}"),
            previous: Vec::new(),
        })
    }

    /// Load the master key from a file (its raw bytes).
    pub fn load(path: &Path) -> Result<LocalKeyFile, VaultError> {
        let key = std::fs::read(path).map_err(|e| io(path, e))?;
        LocalKeyFile::from_file(path, &key)
    }

    /// The master key read from the file at `path`, checked.
    fn from_file(path: &Path, key: &[u8]) -> Result<LocalKeyFile, VaultError> {
        LocalKeyFile::from_key(key)
            .map_err(|e| VaultError::Provider(format!("{}: {e}", path.display())))
    }

    /// Load the master key, creating it (32 random bytes, mode 0600) if the file does not
    /// exist. Losing it makes every patient's identifying data unreadable: back it up,
    /// apart from the log.
    pub fn load_or_create(path: &Path) -> Result<LocalKeyFile, VaultError> {
        let mut candidate = [0u8; MASTER_LEN];
        getrandom::fill(&mut candidate).map_err(|e| VaultError::Random(e.to_string()))?;
        // Made once even when several processes start together (`create_once`).
        let key =
            parcours_identity::key_file::create_once(path, &candidate).map_err(|e| io(path, e))?;
        candidate.iter_mut().for_each(|b| *b = 0);
        LocalKeyFile::from_file(path, &key)
    }

    /// The id of this master key (`local:` and a fingerprint).
    pub fn key_id(&self) -> &str {
        &self.key_id
    }

    /// This provider, also unwrapping the data keys `earlier` wrapped (its own earlier
    /// keys too): the master key it replaces in a rotation. Refused when it is the
    /// current key, or one given already.
    pub fn with_previous(mut self, earlier: LocalKeyFile) -> Result<LocalKeyFile, VaultError> {
        let mut keys = vec![earlier.clone()];
        keys.extend(earlier.previous.iter().cloned());
        for mut key in keys {
            if self.holds(&key.key_id) {
                return Err(VaultError::Provider(format!(
                    "the master key {} is given twice (as the current key or a previous one)",
                    key.key_id
                )));
            }
            key.previous.clear();
            self.previous.push(key);
        }
        Ok(self)
    }

    /// The ids of the earlier master keys this provider unwraps with.
    pub fn previous_key_ids(&self) -> Vec<&str> {
        self.previous.iter().map(|k| k.key_id.as_str()).collect()
    }

    /// The master key, current or previous, whose id is `key_id`.
    fn master_for(&self, key_id: &str) -> Option<&LocalKeyFile> {
        std::iter::once(self)
            .chain(&self.previous)
            .find(|k| k.key_id == key_id)
    }

    /// Whether a data key wrapped by `key_id` unwraps here (the current key or a previous
    /// one).
    pub fn holds(&self, key_id: &str) -> bool {
        self.master_for(key_id).is_some()
    }

    fn tenant_key(&self, tenant: &str) -> DataKey {
        let hk = Hkdf::<Sha256>::new(Some(b"parcours vault v1"), &self.master);
        let mut okm = [0u8; KEY_LEN];
        let info = [b"tenant key\0".as_slice(), tenant.as_bytes()].concat();
        hk.expand(&info, &mut okm)
            .unwrap_or_else(|_| unreachable!("64 bytes is a valid HKDF-SHA-256 length"));
        let key = DataKey::from_bytes(&okm).unwrap_or_else(|| unreachable!("64 bytes"));
        okm.iter_mut().for_each(|b| *b = 0);
        key
    }
}

fn io(path: &Path, e: std::io::Error) -> VaultError {
    VaultError::Provider(format!("key file {}: {e}", path.display()))
}

fn wrap_headers<'a>(tenant: &'a str, subject: &'a str) -> [&'a [u8]; 3] {
    [
        b"parcours data key v1",
        tenant.as_bytes(),
        subject.as_bytes(),
    ]
}

impl KeyProvider for LocalKeyFile {
    async fn wrap(
        &self,
        tenant: &str,
        subject: &str,
        key: &DataKey,
    ) -> Result<(String, Vec<u8>), VaultError> {
        let wrapped = cipher::encrypt_deterministic(
            &self.tenant_key(tenant),
            &wrap_headers(tenant, subject),
            key.expose(),
        );
        Ok((self.key_id.clone(), wrapped))
    }

    async fn unwrap(
        &self,
        tenant: &str,
        subject: &str,
        key_id: &str,
        wrapped: &[u8],
    ) -> Result<DataKey, VaultError> {
        let Some(master) = self.master_for(key_id) else {
            return Err(VaultError::Provider(format!(
                "a data key wrapped by {key_id}, and this provider holds {}{}",
                self.key_id,
                if self.previous.is_empty() {
                    String::new()
                } else {
                    format!(" (previous: {})", self.previous_key_ids().join(", "))
                }
            )));
        };
        let bytes = cipher::decrypt(
            &master.tenant_key(tenant),
            &wrap_headers(tenant, subject),
            wrapped,
        )?;
        DataKey::from_bytes(&bytes).ok_or(VaultError::Undecryptable)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn block<F: Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime")
            .block_on(f)
    }

    #[test]
    fn wrapped_keys_unwrap_only_for_their_tenant_subject_and_master() {
        let p = LocalKeyFile::from_key(&[9u8; 32]).expect("provider");
        let k = DataKey::generate().expect("key");
        let (id, wrapped) = block(p.wrap("cpts-a", "p-1", &k)).expect("wrap");
        assert!(id.starts_with("local:"), "{id}");
        assert!(
            !wrapped
                .windows(8)
                .any(|w| k.expose().windows(8).any(|x| x == w))
        );
        assert_eq!(
            block(p.unwrap("cpts-a", "p-1", &id, &wrapped)).expect("unwrap"),
            k
        );
        assert!(
            block(p.unwrap("cpts-b", "p-1", &id, &wrapped)).is_err(),
            "tenant"
        );
        assert!(
            block(p.unwrap("cpts-a", "p-2", &id, &wrapped)).is_err(),
            "subject"
        );
        let other = LocalKeyFile::from_key(&[8u8; 32]).expect("provider");
        assert!(
            block(other.unwrap("cpts-a", "p-1", &id, &wrapped)).is_err(),
            "master"
        );
        assert!(block(other.unwrap("cpts-a", "p-1", other.key_id(), &wrapped)).is_err());
        assert!(!format!("{p:?}").contains("9, 9"));
        assert!(LocalKeyFile::from_key(&[1u8; 16]).is_err());
    }

    #[test]
    fn previous_master_keys_unwrap_and_the_current_one_wraps() {
        let old = LocalKeyFile::from_key(&[1u8; 32]).expect("old");
        let older = LocalKeyFile::from_key(&[2u8; 32]).expect("older");
        let k = DataKey::generate().expect("key");
        let (old_id, by_old) = block(old.wrap("cpts-a", "p-1", &k)).expect("wrap");
        let (older_id, by_older) = block(older.wrap("cpts-a", "p-1", &k)).expect("wrap");
        let old = old.with_previous(older.clone()).expect("old with older");
        let new = LocalKeyFile::from_key(&[3u8; 32])
            .expect("new")
            .with_previous(old.clone())
            .expect("new with old");
        assert_eq!(
            new.previous_key_ids(),
            vec![old_id.as_str(), older_id.as_str()]
        );
        assert!(new.holds(&older_id) && new.holds(new.key_id()));
        assert_eq!(
            block(new.unwrap("cpts-a", "p-1", &old_id, &by_old)).expect("old"),
            k
        );
        assert_eq!(
            block(new.unwrap("cpts-a", "p-1", &older_id, &by_older)).expect("older"),
            k
        );
        let (id, _) = block(new.wrap("cpts-a", "p-1", &k)).expect("wrap");
        assert_eq!(id, new.key_id(), "new keys are wrapped by the current key");
        // A previous key does not unwrap what another key wrapped under its id.
        assert!(block(new.unwrap("cpts-a", "p-1", &old_id, &by_older)).is_err());
        let refused = new.clone().with_previous(older).expect_err("given twice");
        assert!(refused.to_string().contains("given twice"), "{refused}");
        assert!(new.clone().with_previous(new.clone()).is_err(), "itself");
        let unknown = LocalKeyFile::from_key(&[4u8; 32]).expect("unknown");
        let err = block(unknown.unwrap("cpts-a", "p-1", &old_id, &by_old)).expect_err("unknown");
        assert!(err.to_string().contains(&old_id), "{err}");
        assert!(!format!("{new:?}").contains("3, 3"));
    }

    #[test]
    fn the_master_key_file_is_created_once_private() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("vault.key");
        let a = LocalKeyFile::load_or_create(&path).expect("created");
        let b = LocalKeyFile::load_or_create(&path).expect("loaded");
        assert_eq!(a.key_id(), b.key_id());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).expect("meta").permissions().mode();
            assert_eq!(mode & 0o077, 0, "{mode:o}");
        }
    }
}
