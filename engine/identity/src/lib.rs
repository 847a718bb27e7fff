//! parcours-identity: pseudonymous patient keys.
//!
//! Hospitals and labs name a patient by identifiers that must never reach logs, metric
//! labels or NATS subjects: the INS (national health identifier: NIR or NIA), a hospital's
//! IPP (local patient number), a lab's patient id. Everything inside parcours names the
//! patient by a **subject key** instead: `p-` followed by 32 hex digits of
//! HMAC-SHA-256(key, tenant ‖ system ‖ value).
//!
//! - **keyed**: without the key, the subject of a known NIR cannot be computed (a plain
//!   hash of a 13-digit number can be reversed by enumeration; a keyed one cannot);
//! - **stable**: the same identifier in the same tenant always gives the same subject, so
//!   events from different sources and months apart meet on one patient;
//! - **scoped**: two tenants (CPTS) get unrelated subjects for the same person;
//! - the key lives **outside the database** (a file readable by the engine only), so a
//!   copy of the log alone does not link subjects back to people.
//!
//! Two identifiers of one person (an IPP today, the INS tomorrow) give two subjects; what
//! joins them is a message naming the person by both — the qualified INS and the local
//! identifier: an identity link (`parcours_runtime::links`), the local key resolving to
//! the INS's from then on — or an identity merge (ADT^A40).

use std::fmt;
use std::path::Path;

use hmac::{Hmac, KeyInit, Mac};

pub mod key_file;
use sha2::Sha256;

/// OID of the INS built on the NIR (the patient's own social-security number).
pub const OID_INS_NIR: &str = "1.2.250.1.213.1.4.8";
/// OID of the INS built on the NIA (a number given while the NIR is pending).
pub const OID_INS_NIA: &str = "1.2.250.1.213.1.4.9";
/// OID of test INS built on a NIR (test identities: refused unless configured).
pub const OID_INS_NIR_TEST: &str = "1.2.250.1.213.1.4.10";
/// OID of demonstration INS built on a NIA (test identities: refused unless configured).
pub const OID_INS_NIA_TEST: &str = "1.2.250.1.213.1.4.11";

/// What kind of identifier names the patient, best first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum IdentifierKind {
    /// The INS (NIR or NIA), used only when the identity is qualified.
    Ins,
    /// A local identifier from one assigning authority (a hospital's IPP, a lab's id).
    Local,
}

/// A patient identifier as a source sent it. Never log or display it: it is patient data
/// (its `Debug` shows only the kind and system).
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct PatientIdentifier {
    /// INS or local.
    pub kind: IdentifierKind,
    /// The namespace: an OID (INS, a FINESS-based authority) or an assigning authority name.
    pub system: String,
    /// The identifier itself.
    pub value: String,
}

impl PatientIdentifier {
    /// An INS identifier (`system` is its OID).
    pub fn ins(system: impl Into<String>, value: impl Into<String>) -> PatientIdentifier {
        PatientIdentifier {
            kind: IdentifierKind::Ins,
            system: system.into(),
            value: value.into(),
        }
    }

    /// A local identifier from an assigning authority.
    pub fn local(system: impl Into<String>, value: impl Into<String>) -> PatientIdentifier {
        PatientIdentifier {
            kind: IdentifierKind::Local,
            system: system.into(),
            value: value.into(),
        }
    }

    /// An identifier as a person or a system writes it down — `system` an OID, with or
    /// without FHIR's `urn:oid:`, or another namespace — keyed as the HL7 v2 and FHIR
    /// intakes key it: `urn:oid:` dropped, spaces around either part trimmed, the INS when
    /// the system is one of the INS OIDs ([`OID_INS_NIR`] …), else local.
    pub fn written(system: &str, value: &str) -> PatientIdentifier {
        let system = system.trim();
        let system = system.strip_prefix("urn:oid:").unwrap_or(system);
        let value = value.trim();
        if [OID_INS_NIR, OID_INS_NIA, OID_INS_NIR_TEST, OID_INS_NIA_TEST].contains(&system) {
            PatientIdentifier::ins(system, value)
        } else {
            PatientIdentifier::local(system, value)
        }
    }
}

impl fmt::Debug for PatientIdentifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PatientIdentifier")
            .field("kind", &self.kind)
            .field("system", &self.system)
            .field("value", &"<redacted>")
            .finish()
    }
}

/// Why a key could not be loaded or made.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The key file could not be read or written.
    #[error("identity key file {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// What went wrong.
        source: std::io::Error,
    },
    /// The key is too short to be a secret.
    #[error("identity key file {path} holds {len} bytes; at least 32 are needed")]
    TooShort {
        /// The file.
        path: String,
        /// Its length.
        len: usize,
    },
}

/// Turns patient identifiers into subject keys. Its `Debug` never shows the key.
#[derive(Clone)]
pub struct Pseudonymizer {
    key: Vec<u8>,
}

impl fmt::Debug for Pseudonymizer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Pseudonymizer(<key redacted>)")
    }
}

/// Bytes of a key file made by [`Pseudonymizer::load_or_create`].
const KEY_LEN: usize = 32;

impl Pseudonymizer {
    /// A pseudonymizer with this key (at least 32 bytes).
    pub fn from_key(key: &[u8]) -> Option<Pseudonymizer> {
        (key.len() >= KEY_LEN).then(|| Pseudonymizer { key: key.to_vec() })
    }

    /// Load the key from a file (its raw bytes; at least 32).
    pub fn load(path: &Path) -> Result<Pseudonymizer, KeyError> {
        let key = std::fs::read(path).map_err(|e| io_error(path, e))?;
        Pseudonymizer::from_file(path, &key)
    }

    /// The key read from the file at `path`, checked.
    fn from_file(path: &Path, key: &[u8]) -> Result<Pseudonymizer, KeyError> {
        Pseudonymizer::from_key(key).ok_or(KeyError::TooShort {
            path: path.display().to_string(),
            len: key.len(),
        })
    }

    /// Load the key from a file, creating it with 32 random bytes (mode 0600) if there is
    /// none: what the embedded mode does next to its log. Losing this file means new
    /// events no longer meet the patients already enrolled: back it up with the log, but
    /// never inside it.
    pub fn load_or_create(path: &Path) -> Result<Pseudonymizer, KeyError> {
        let mut candidate = [0u8; KEY_LEN];
        getrandom(&mut candidate).map_err(|e| io_error(path, e))?;
        // Made once even when several processes start together (`create_once`).
        let key = key_file::create_once(path, &candidate).map_err(|e| io_error(path, e))?;
        Pseudonymizer::from_file(path, &key)
    }

    /// The subject key of an identifier in a tenant: `p-` and 32 hex digits.
    pub fn subject(&self, tenant: &str, id: &PatientIdentifier) -> String {
        let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(&self.key)
            .unwrap_or_else(|_| unreachable_key());
        // Length-prefixed parts: ("a", "bc") and ("ab", "c") never collide.
        for part in [tenant, &id.system, &id.value] {
            mac.update(&(part.len() as u64).to_be_bytes());
            mac.update(part.as_bytes());
        }
        let digest = mac.finalize().into_bytes();
        let mut out = String::with_capacity(34);
        out.push_str("p-");
        for b in &digest[..16] {
            out.push_str(&format!("{b:02x}"));
        }
        out
    }
}

/// HMAC accepts keys of any length: this cannot happen.
#[cold]
fn unreachable_key() -> Hmac<Sha256> {
    unreachable!("HMAC-SHA-256 takes keys of any length")
}

/// Fill `buf` from the operating system's random source.
fn io_error(path: &Path, source: std::io::Error) -> KeyError {
    KeyError::Io {
        path: path.display().to_string(),
        source,
    }
}

fn getrandom(buf: &mut [u8]) -> std::io::Result<()> {
    use std::io::Read;
    std::fs::File::open("/dev/urandom")?.read_exact(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p() -> Pseudonymizer {
        Pseudonymizer::from_key(&[7u8; 32]).expect("key")
    }

    #[test]
    fn subjects_are_stable_scoped_and_keyed() {
        let nir = PatientIdentifier::ins(OID_INS_NIR, "180027512345678");
        let a = p().subject("cpts-a", &nir);
        assert_eq!(a, p().subject("cpts-a", &nir), "stable");
        assert!(a.starts_with("p-") && a.len() == 34, "{a}");
        assert!(!a.contains("180027512345678"));
        assert_ne!(a, p().subject("cpts-b", &nir), "scoped by tenant");
        let other_key = Pseudonymizer::from_key(&[8u8; 32]).expect("key");
        assert_ne!(a, other_key.subject("cpts-a", &nir), "keyed");
        let ipp = PatientIdentifier::local("HOSP-A", "180027512345678");
        assert_ne!(
            a,
            p().subject("cpts-a", &ipp),
            "the system is part of the key"
        );
    }

    #[test]
    fn parts_cannot_slide_into_each_other() {
        let x = PatientIdentifier::local("ab", "c");
        let y = PatientIdentifier::local("a", "bc");
        assert_ne!(p().subject("t", &x), p().subject("t", &y));
    }

    #[test]
    fn debug_output_holds_no_identifier_and_no_key() {
        let nir = PatientIdentifier::ins(OID_INS_NIR, "180027512345678");
        let shown = format!("{nir:?} {:?}", p());
        assert!(!shown.contains("180027512345678"), "{shown}");
        assert!(!shown.contains("7, 7"), "{shown}");
    }

    #[test]
    fn short_keys_are_refused() {
        assert!(Pseudonymizer::from_key(&[1u8; 16]).is_none());
    }

    #[test]
    fn a_key_file_is_created_once_then_reused() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("identity.key");
        let first = Pseudonymizer::load_or_create(&path).expect("created");
        let again = Pseudonymizer::load_or_create(&path).expect("loaded");
        let id = PatientIdentifier::local("HOSP", "12345");
        assert_eq!(first.subject("t", &id), again.subject("t", &id));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).expect("meta").permissions().mode();
            assert_eq!(mode & 0o077, 0, "the key file is private: {mode:o}");
        }
    }

    #[test]
    fn an_identifier_written_by_hand_keys_as_the_intakes_key_it() {
        let p = p();
        let hl7 = PatientIdentifier::ins(OID_INS_NIR, "280079912345678");
        for (system, value) in [
            ("1.2.250.1.213.1.4.8", "280079912345678"),
            ("urn:oid:1.2.250.1.213.1.4.8", "280079912345678"),
            (" 1.2.250.1.213.1.4.8 ", " 280079912345678"),
        ] {
            let written = PatientIdentifier::written(system, value);
            assert_eq!(written.kind, IdentifierKind::Ins);
            assert_eq!(p.subject("t", &written), p.subject("t", &hl7), "{system}");
        }
        let ipp = PatientIdentifier::written("urn:oid:1.2.250.1.211.10.200.2", "123456");
        assert_eq!(ipp.kind, IdentifierKind::Local);
        assert_eq!(ipp.system, "1.2.250.1.211.10.200.2");
    }
}
