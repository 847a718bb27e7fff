//! The one primitive: AES-256-SIV (RFC 5297), a misuse-resistant AEAD.
//!
//! - **deterministic where equality must survive**: the same value of one patient always
//!   gives the same [`token`], so a discharge cancellation still meets its discharge by
//!   visit number, and a replay writes the same bytes;
//! - **randomised elsewhere**: [`seal`] adds a random nonce (dead letters: two identical
//!   refused messages give unrelated ciphertexts);
//! - **key wrapping** is what SIV was designed for (RFC 5297 §1.3.2).
//!
//! Associated data binds every ciphertext to its tenant and subject: a token or a
//! wrapped key copied to another patient does not open.

use std::fmt;

use aes_siv::KeyInit;
use aes_siv::siv::Aes256Siv;

use crate::VaultError;

/// Bytes of a key (AES-256-SIV takes two AES-256 keys).
pub const KEY_LEN: usize = 64;

/// A symmetric key: a patient's data key, or a tenant key inside a provider. Its `Debug`
/// never shows it; it is wiped when dropped.
#[derive(Clone, PartialEq, Eq)]
pub struct DataKey([u8; KEY_LEN]);

impl DataKey {
    /// A new random key (the operating system's random source).
    pub fn generate() -> Result<DataKey, VaultError> {
        let mut k = [0u8; KEY_LEN];
        getrandom::fill(&mut k).map_err(|e| VaultError::Random(e.to_string()))?;
        Ok(DataKey(k))
    }

    /// A key from its bytes (exactly [`KEY_LEN`]).
    pub fn from_bytes(bytes: &[u8]) -> Option<DataKey> {
        <[u8; KEY_LEN]>::try_from(bytes).ok().map(DataKey)
    }

    /// The raw bytes (to wrap it).
    pub fn expose(&self) -> &[u8] {
        &self.0
    }

    fn siv(&self) -> Aes256Siv {
        // A 64-byte slice is the key size of AES-256-SIV: this cannot fail.
        Aes256Siv::new_from_slice(&self.0).unwrap_or_else(|_| unreachable!("64-byte SIV key"))
    }
}

impl Drop for DataKey {
    fn drop(&mut self) {
        // Best effort wipe (no unsafe: a volatile write is not available, the optimiser
        // may keep copies; the point is not to leave it in freed memory by default).
        self.0.iter_mut().for_each(|b| *b = 0);
        std::hint::black_box(&self.0);
    }
}

impl fmt::Debug for DataKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("DataKey(<redacted>)")
    }
}

/// Encrypt deterministically: same key, headers and plaintext, same bytes.
pub fn encrypt_deterministic(key: &DataKey, headers: &[&[u8]], plaintext: &[u8]) -> Vec<u8> {
    key.siv()
        .encrypt(headers, plaintext)
        .unwrap_or_else(|_| unreachable!("SIV encryption of an in-memory buffer"))
}

/// Decrypt what [`encrypt_deterministic`] made with the same headers.
pub fn decrypt(key: &DataKey, headers: &[&[u8]], ciphertext: &[u8]) -> Result<Vec<u8>, VaultError> {
    key.siv()
        .decrypt(headers, ciphertext)
        .map_err(|_| VaultError::Undecryptable)
}

/// Magic of a sealed blob (`seal`).
const SEALED: &[u8; 4] = b"PVS1";
/// Random nonce of a sealed blob.
const NONCE_LEN: usize = 16;

/// Encrypt with a random nonce: `PVS1 ‖ nonce ‖ SIV(headers ‖ nonce, plaintext)`.
pub fn seal(key: &DataKey, headers: &[&[u8]], plaintext: &[u8]) -> Result<Vec<u8>, VaultError> {
    let mut nonce = [0u8; NONCE_LEN];
    getrandom::fill(&mut nonce).map_err(|e| VaultError::Random(e.to_string()))?;
    let mut all: Vec<&[u8]> = headers.to_vec();
    all.push(&nonce);
    let ct = encrypt_deterministic(key, &all, plaintext);
    let mut out = Vec::with_capacity(SEALED.len() + NONCE_LEN + ct.len());
    out.extend_from_slice(SEALED);
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&ct);
    Ok(out)
}

/// Whether bytes are a sealed blob (else: stored before encryption existed).
pub fn is_sealed(bytes: &[u8]) -> bool {
    bytes.len() > SEALED.len() + NONCE_LEN && bytes.starts_with(SEALED)
}

/// Open a sealed blob made with the same key and headers.
pub fn open(key: &DataKey, headers: &[&[u8]], sealed: &[u8]) -> Result<Vec<u8>, VaultError> {
    if !is_sealed(sealed) {
        return Err(VaultError::Undecryptable);
    }
    let (nonce, ct) = sealed[SEALED.len()..].split_at(NONCE_LEN);
    let mut all: Vec<&[u8]> = headers.to_vec();
    all.push(nonce);
    decrypt(key, &all, ct)
}

/// Prefix of an identifying value replaced by its token.
pub const TOKEN_PREFIX: &str = "enc1:";

/// Headers of a patient's tokens.
fn token_headers<'a>(tenant: &'a str, subject: &'a str) -> [&'a [u8]; 3] {
    [b"parcours token v1", tenant.as_bytes(), subject.as_bytes()]
}

/// The token of an identifying value: `enc1:` and the hex of its deterministic
/// encryption under the patient's data key. Equal values of one patient give equal
/// tokens; nothing else can be learnt from it without the key.
pub fn token(key: &DataKey, tenant: &str, subject: &str, value: &str) -> String {
    let ct = encrypt_deterministic(key, &token_headers(tenant, subject), value.as_bytes());
    let mut out = String::with_capacity(TOKEN_PREFIX.len() + ct.len() * 2);
    out.push_str(TOKEN_PREFIX);
    for b in ct {
        out.push_str(&format!("{b:02x}"));
    }
    out
}

/// Whether a value is a token.
pub fn is_token(value: &str) -> bool {
    value.starts_with(TOKEN_PREFIX)
}

/// The value behind a token (`None`: not a token, another patient's, or a destroyed key).
pub fn reveal(key: &DataKey, tenant: &str, subject: &str, token: &str) -> Option<String> {
    let hex = token.strip_prefix(TOKEN_PREFIX)?;
    if hex.len() % 2 != 0 {
        return None;
    }
    let bytes = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok())
        .collect::<Option<Vec<u8>>>()?;
    let plain = decrypt(key, &token_headers(tenant, subject), &bytes).ok()?;
    String::from_utf8(plain).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(b: u8) -> DataKey {
        DataKey([b; KEY_LEN])
    }

    #[test]
    fn tokens_are_deterministic_per_patient_and_bound_to_them() {
        let k = key(1);
        let a = token(&k, "cpts-a", "p-1", "V12345");
        assert_eq!(a, token(&k, "cpts-a", "p-1", "V12345"), "deterministic");
        assert!(is_token(&a) && !a.contains("V12345"), "{a}");
        assert_ne!(a, token(&k, "cpts-a", "p-1", "V12346"));
        assert_ne!(
            a,
            token(&k, "cpts-a", "p-2", "V12345"),
            "bound to the subject"
        );
        assert_ne!(
            a,
            token(&k, "cpts-b", "p-1", "V12345"),
            "bound to the tenant"
        );
        assert_eq!(reveal(&k, "cpts-a", "p-1", &a).as_deref(), Some("V12345"));
        assert_eq!(reveal(&k, "cpts-a", "p-2", &a), None, "another patient");
        assert_eq!(reveal(&key(2), "cpts-a", "p-1", &a), None, "another key");
        assert_eq!(reveal(&k, "cpts-a", "p-1", "V12345"), None, "not a token");
        assert_eq!(reveal(&k, "cpts-a", "p-1", "enc1:zz"), None);
    }

    #[test]
    fn sealed_blobs_are_randomised_and_authenticated() {
        let k = key(3);
        let h: [&[u8]; 2] = [b"dead letter", b"cpts-a"];
        let a = seal(&k, &h, b"PID|||123^^^HOSP").expect("seal");
        let b = seal(&k, &h, b"PID|||123^^^HOSP").expect("seal");
        assert_ne!(a, b, "a random nonce each time");
        assert!(is_sealed(&a));
        assert!(!a.windows(3).any(|w| w == b"123"));
        assert_eq!(open(&k, &h, &a).expect("open"), b"PID|||123^^^HOSP");
        assert!(open(&key(4), &h, &a).is_err(), "another key");
        assert!(
            open(&k, &[b"dead letter", b"cpts-b"], &a).is_err(),
            "another tenant"
        );
        let mut tampered = a.clone();
        let last = tampered.len() - 1;
        tampered[last] ^= 1;
        assert!(open(&k, &h, &tampered).is_err(), "tampered");
        assert!(open(&k, &h, b"plain").is_err());
    }

    #[test]
    fn keys_are_random_and_never_shown() {
        let a = DataKey::generate().expect("key");
        assert_ne!(a, DataKey::generate().expect("key"));
        assert_eq!(format!("{a:?}"), "DataKey(<redacted>)");
        assert!(DataKey::from_bytes(&[0; 32]).is_none());
        assert_eq!(DataKey::from_bytes(a.expose()), Some(a));
    }
}
