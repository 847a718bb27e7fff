//! Static API keys for systems (a hospital's interface engine, a lab, care-team
//! software): `pck_` and 64 hex digits (256 random bits). The server keeps only their
//! SHA-256: a key of that much entropy needs no slow hash, and a leaked configuration
//! gives no key. A principal may hold several keys, each with its own id (rotation: add
//! the new key, move the callers, revoke the old one with `revoked: true` or by removing
//! it).

use std::collections::{BTreeSet, HashMap};
use std::fmt;

use serde::Deserialize;
use sha2::{Digest, Sha256};

use super::{AuthError, Principal, Role, Tenants, refused};

/// A secret kept out of `Debug`, logs and error messages.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wrap.
    pub fn new(s: impl Into<String>) -> Secret {
        Secret(s.into())
    }

    /// The secret itself, to hand to whoever must use it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// One configured key.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiKeyConfig {
    /// The key's id (audit trail, rotation).
    pub id: String,
    /// Who holds it.
    pub principal: String,
    /// Hex SHA-256 of the key.
    pub sha256: String,
    /// Its tenants (`["*"]`: every tenant).
    pub tenants: Vec<String>,
    /// Its roles (`coordinator`, `care-team:<role>`, `integration`, `ops`).
    pub roles: Vec<String>,
    /// A revoked key is refused.
    #[serde(default)]
    pub revoked: bool,
}

/// The keys, by hash.
#[derive(Default)]
pub struct ApiKeys {
    by_hash: HashMap<[u8; 32], Principal>,
}

impl fmt::Debug for ApiKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Principals only: not even the hashes.
        let mut ids: Vec<&str> = self.by_hash.values().map(|p| p.id.as_str()).collect();
        ids.sort_unstable();
        f.debug_struct("ApiKeys").field("keys", &ids).finish()
    }
}

fn digest(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

/// Hex SHA-256 of a key: what the configuration holds.
pub fn sha256_hex(key: &str) -> String {
    digest(key).iter().map(|b| format!("{b:02x}")).collect()
}

fn from_hex(s: &str) -> Option<[u8; 32]> {
    if s.len() != 64 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

/// A new random key (`pck_` + 64 hex digits) from the operating system.
pub fn generate() -> std::io::Result<Secret> {
    use std::io::Read;
    let mut buf = [0u8; 32];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut buf)?;
    let hex: String = buf.iter().map(|b| format!("{b:02x}")).collect();
    Ok(Secret(format!("pck_{hex}")))
}

/// Parse roles and tenants of a key or a token.
pub(crate) fn principal(
    id: String,
    tenants: &[String],
    roles: &[String],
) -> Result<Principal, String> {
    let tenants = if tenants.iter().any(|t| t == super::EVERY_TENANT) {
        Tenants::All
    } else {
        for t in tenants {
            if crate::handlers::check_tenant(t).is_err() {
                return Err(format!("tenant `{t}` is not a tenant id"));
            }
        }
        Tenants::Some(tenants.iter().cloned().collect())
    };
    let roles = roles
        .iter()
        .map(|r| Role::parse(r).ok_or_else(|| format!("unknown role `{r}`")))
        .collect::<Result<BTreeSet<_>, _>>()?;
    Ok(Principal { id, tenants, roles })
}

impl ApiKeys {
    /// From the configuration (revoked keys are left out).
    pub fn new(keys: Vec<ApiKeyConfig>) -> Result<ApiKeys, AuthError> {
        let mut by_hash = HashMap::new();
        let mut ids = BTreeSet::new();
        for k in keys {
            if !ids.insert(k.id.clone()) {
                return Err(AuthError::Config(format!("API key id `{}` twice", k.id)));
            }
            let hash = from_hex(&k.sha256).ok_or_else(|| {
                AuthError::Config(format!("API key `{}`: sha256 must be 64 hex digits", k.id))
            })?;
            if k.revoked {
                continue;
            }
            let p = principal(
                format!("key:{}/{}", k.principal, k.id),
                &k.tenants,
                &k.roles,
            )
            .map_err(|e| AuthError::Config(format!("API key `{}`: {e}", k.id)))?;
            if by_hash.insert(hash, p).is_some() {
                return Err(AuthError::Config(format!(
                    "API key `{}` has the hash of another key",
                    k.id
                )));
            }
        }
        Ok(ApiKeys { by_hash })
    }

    /// The keys in force (revoked ones left out).
    pub fn len(&self) -> usize {
        self.by_hash.len()
    }

    /// Whether no key is configured.
    pub fn is_empty(&self) -> bool {
        self.by_hash.is_empty()
    }

    /// The principal of a key. The lookup is by SHA-256, so its timing says nothing
    /// useful about the keys.
    pub fn check(&self, key: &str) -> Result<Principal, AuthError> {
        self.by_hash
            .get(&digest(key))
            .cloned()
            .ok_or_else(|| refused("unknown or revoked API key"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(key: &str, id: &str, revoked: bool) -> ApiKeyConfig {
        ApiKeyConfig {
            id: id.into(),
            principal: "chu-nord".into(),
            sha256: sha256_hex(key),
            tenants: vec!["cpts-a".into()],
            roles: vec!["integration".into()],
            revoked,
        }
    }

    #[test]
    fn keys_rotate_and_revoke() {
        let old = generate().expect("key");
        let new = generate().expect("key");
        assert_ne!(old, new);
        assert!(old.expose().starts_with("pck_") && old.expose().len() == 68);
        let keys = ApiKeys::new(vec![
            config(old.expose(), "k1", false),
            config(new.expose(), "k2", false),
        ])
        .expect("keys");
        assert_eq!(keys.check(old.expose()).expect("old").id, "key:chu-nord/k1");
        assert_eq!(keys.check(new.expose()).expect("new").id, "key:chu-nord/k2");
        let keys = ApiKeys::new(vec![
            config(old.expose(), "k1", true),
            config(new.expose(), "k2", false),
        ])
        .expect("keys");
        assert!(keys.check(old.expose()).is_err(), "revoked");
        assert!(keys.check(new.expose()).is_ok());
        assert!(keys.check("pck_guess").is_err());
    }

    #[test]
    fn secrets_never_show_in_debug() {
        let s = generate().expect("key");
        let shown = format!("{s:?}");
        assert!(!shown.contains(&s.expose()[4..]), "{shown}");
        let keys = ApiKeys::new(vec![config(s.expose(), "k1", false)]).expect("keys");
        let shown = format!("{keys:?}");
        assert!(shown.contains("key:chu-nord/k1"), "{shown}");
        assert!(!shown.contains(&sha256_hex(s.expose())), "{shown}");
        assert!(!shown.contains(&s.expose()[4..]), "{shown}");
    }

    #[test]
    fn bad_configuration_is_refused() {
        let mut c = config("k", "k1", false);
        c.roles = vec!["admin".into()];
        assert!(ApiKeys::new(vec![c]).is_err(), "unknown role");
        let mut c = config("k", "k1", false);
        c.sha256 = "abc".into();
        assert!(ApiKeys::new(vec![c]).is_err(), "short hash");
        let mut c = config("k", "k1", false);
        c.tenants = vec!["CPTS A".into()];
        assert!(ApiKeys::new(vec![c]).is_err(), "bad tenant");
    }
}
