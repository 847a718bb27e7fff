//! OAuth2 / OIDC bearer tokens: JWTs signed by a configured issuer (Pro Santé Connect, a
//! hospital's or the CPTS's identity provider), checked against its keys: fetched from
//! its `jwks_uri` and kept current ([`super::jwks`]), or given offline (a JWKS file, PEM
//! public keys). Checked: the signature with a key of the issuer for
//! the header's algorithm (asymmetric only: RS256/384/512, PS256/384/512, ES256/384,
//! EdDSA; `none` and HMAC are refused), `iss`, `aud`, `exp` (required), `nbf`, with a
//! small leeway. The principal's tenants and roles come from two claims.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, JwkSet, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use serde_json::Value;

use super::jwks::RemoteKeys;
use super::{AuthError, Principal, refused};

fn default_algorithms() -> Vec<String> {
    vec!["RS256".into(), "ES256".into()]
}
fn default_tenants_claim() -> String {
    "parcours_tenants".into()
}
fn default_roles_claim() -> String {
    "parcours_roles".into()
}
fn default_leeway() -> u64 {
    30
}
fn default_jwks_refresh() -> u64 {
    300
}
fn default_jwks_min_refetch() -> u64 {
    30
}

/// One issuer of tokens.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IssuerConfig {
    /// `iss` of its tokens.
    pub issuer: String,
    /// Accepted `aud` values (one must be in the token).
    pub audiences: Vec<String>,
    /// Where it publishes its keys (the `jwks_uri` of its OpenID configuration): fetched
    /// at start, every `jwks_refresh_secs`, and when a token names a key not yet seen.
    /// HTTPS (plain HTTP only to a loopback address).
    #[serde(default)]
    pub jwks_uri: Option<String>,
    /// Seconds between two fetches of `jwks_uri` (default 300, at least 10).
    #[serde(default = "default_jwks_refresh")]
    pub jwks_refresh_secs: u64,
    /// A token naming a key not yet seen makes `jwks_uri` fetched again at most once in
    /// this many seconds (default 30, at least 1).
    #[serde(default = "default_jwks_min_refetch")]
    pub jwks_min_refetch_secs: u64,
    /// Certificate authorities (PEM) trusted for `jwks_uri` besides the system's (an
    /// identity provider on a private PKI).
    #[serde(default)]
    pub jwks_ca_file: Option<PathBuf>,
    /// Its public keys as a JWKS file (what `jwks_uri` serves, saved).
    #[serde(default)]
    pub jwks_file: Option<PathBuf>,
    /// Or PEM public keys.
    #[serde(default)]
    pub keys: Vec<PemKeyConfig>,
    /// Accepted algorithms (default RS256, ES256).
    #[serde(default = "default_algorithms")]
    pub algorithms: Vec<String>,
    /// The claim holding the tenants (a string or a list).
    #[serde(default = "default_tenants_claim")]
    pub tenants_claim: String,
    /// The claim holding the roles (a string or a list).
    #[serde(default = "default_roles_claim")]
    pub roles_claim: String,
    /// Clock skew tolerated on `exp` and `nbf`, in seconds (default 30).
    #[serde(default = "default_leeway")]
    pub leeway_secs: u64,
}

/// A PEM public key of an issuer.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PemKeyConfig {
    /// The `kid` tokens name it by (none: tried for every token of its algorithm).
    #[serde(default)]
    pub kid: Option<String>,
    /// Its algorithm (`RS256`, `ES256` …).
    pub alg: String,
    /// The PEM file.
    #[serde(default)]
    pub pem_file: Option<PathBuf>,
    /// Or the PEM text.
    #[serde(default)]
    pub pem: Option<String>,
}

impl IssuerConfig {
    /// An issuer of tokens for `audiences`, every other setting its default; give it its
    /// keys (`jwks_uri`, `jwks_file` or `keys`).
    pub fn new(issuer: impl Into<String>, audiences: Vec<String>) -> IssuerConfig {
        IssuerConfig {
            issuer: issuer.into(),
            audiences,
            jwks_uri: None,
            jwks_refresh_secs: default_jwks_refresh(),
            jwks_min_refetch_secs: default_jwks_min_refetch(),
            jwks_ca_file: None,
            jwks_file: None,
            keys: Vec::new(),
            algorithms: default_algorithms(),
            tenants_claim: default_tenants_claim(),
            roles_claim: default_roles_claim(),
            leeway_secs: default_leeway(),
        }
    }

    /// The files it names: its saved JWKS, its CA, its PEM keys.
    pub fn files(&self) -> impl Iterator<Item = PathBuf> + '_ {
        self.jwks_file
            .iter()
            .chain(&self.jwks_ca_file)
            .chain(self.keys.iter().filter_map(|k| k.pem_file.as_ref()))
            .cloned()
    }

    pub(crate) fn resolve_paths(&mut self, base: &Path) {
        let fix = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        if let Some(p) = &mut self.jwks_file {
            fix(p);
        }
        if let Some(p) = &mut self.jwks_ca_file {
            fix(p);
        }
        for k in &mut self.keys {
            if let Some(p) = &mut k.pem_file {
                fix(p);
            }
        }
    }
}

fn algorithm(s: &str) -> Result<Algorithm, String> {
    let alg: Algorithm = s.parse().map_err(|_| format!("unknown algorithm `{s}`"))?;
    if matches!(alg, Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512) {
        return Err(format!(
            "`{s}`: shared-secret algorithms are refused (an issuer signs, parcours only verifies)"
        ));
    }
    Ok(alg)
}

/// A verifying key of an issuer.
#[derive(Debug)]
pub(crate) struct Key {
    kid: Option<String>,
    alg: Algorithm,
    key: DecodingKey,
}

/// Whether a key of this type can verify `alg`'s signatures.
fn fits(params: &AlgorithmParameters, alg: Algorithm) -> bool {
    use Algorithm as A;
    match params {
        AlgorithmParameters::RSA(_) => matches!(
            alg,
            A::RS256 | A::RS384 | A::RS512 | A::PS256 | A::PS384 | A::PS512
        ),
        AlgorithmParameters::EllipticCurve(p) => matches!(
            (&p.curve, alg),
            (EllipticCurve::P256, A::ES256) | (EllipticCurve::P384, A::ES384)
        ),
        AlgorithmParameters::OctetKeyPair(p) => {
            p.curve == EllipticCurve::Ed25519 && alg == A::EdDSA
        }
        AlgorithmParameters::OctetKey(_) => false,
    }
}

/// The signing keys of a JWKS, for the `accepted` algorithms. A key naming its `alg` is
/// for that algorithm; one without (as some providers publish them) for each accepted
/// algorithm its type fits. Skipped: encryption keys, keys of an algorithm parcours
/// does not verify with (shared secrets).
pub(crate) fn keys_of_set(set: &JwkSet, accepted: &[Algorithm]) -> Result<Vec<Key>, String> {
    let mut keys = Vec::new();
    for jwk in &set.keys {
        if matches!(jwk.common.public_key_use, Some(PublicKeyUse::Encryption)) {
            continue;
        }
        let algs: Vec<Algorithm> = match jwk.common.key_algorithm {
            Some(a) => match algorithm(&a.to_string()) {
                Ok(alg) if fits(&jwk.algorithm, alg) => vec![alg],
                _ => continue,
            },
            None => accepted
                .iter()
                .copied()
                .filter(|a| fits(&jwk.algorithm, *a))
                .collect(),
        };
        if algs.is_empty() {
            continue;
        }
        let key = DecodingKey::from_jwk(jwk).map_err(|e| format!("a JWK: {e}"))?;
        for alg in algs {
            keys.push(Key {
                kid: jwk.common.key_id.clone(),
                alg,
                key: key.clone(),
            });
        }
    }
    Ok(keys)
}

/// A configured issuer, ready to verify.
#[derive(Debug)]
pub struct Issuer {
    name: String,
    /// Its keys given offline (`jwks_file`, `keys`).
    keys: Vec<Key>,
    /// Its keys fetched from `jwks_uri`.
    remote: Option<Arc<RemoteKeys>>,
    validation: Validation,
    tenants_claim: String,
    roles_claim: String,
}

fn config_error(issuer: &str, m: impl std::fmt::Display) -> AuthError {
    AuthError::Config(format!("issuer {issuer}: {m}"))
}

impl Issuer {
    /// Load its keys and set its checks.
    pub fn new(c: IssuerConfig) -> Result<Issuer, AuthError> {
        let err = |m: String| config_error(&c.issuer, m);
        if c.audiences.is_empty() {
            return Err(err("give at least one audience".into()));
        }
        let algorithms = c
            .algorithms
            .iter()
            .map(|a| algorithm(a))
            .collect::<Result<Vec<_>, _>>()
            .map_err(err)?;
        if algorithms.is_empty() {
            return Err(err("give at least one algorithm".into()));
        }
        let mut keys = Vec::new();
        if let Some(path) = &c.jwks_file {
            let text = std::fs::read_to_string(path)
                .map_err(|e| err(format!("{}: {e}", path.display())))?;
            let set: JwkSet = serde_json::from_str(&text)
                .map_err(|e| err(format!("{}: not a JWKS: {e}", path.display())))?;
            keys.extend(keys_of_set(&set, &algorithms).map_err(err)?);
        }
        for k in &c.keys {
            let alg = algorithm(&k.alg).map_err(err)?;
            let pem = match (&k.pem_file, &k.pem) {
                (Some(p), None) => {
                    std::fs::read(p).map_err(|e| err(format!("{}: {e}", p.display())))?
                }
                (None, Some(t)) => t.as_bytes().to_vec(),
                _ => return Err(err("each key gives one of pem_file, pem".into())),
            };
            let key = match alg {
                Algorithm::ES256 | Algorithm::ES384 => DecodingKey::from_ec_pem(&pem),
                Algorithm::EdDSA => DecodingKey::from_ed_pem(&pem),
                _ => DecodingKey::from_rsa_pem(&pem),
            }
            .map_err(|e| err(format!("key {:?}: {e}", k.kid)))?;
            keys.push(Key {
                kid: k.kid.clone(),
                alg,
                key,
            });
        }
        let remote = match &c.jwks_uri {
            Some(uri) => Some(Arc::new(
                RemoteKeys::new(
                    &c.issuer,
                    uri,
                    Duration::from_secs(c.jwks_refresh_secs),
                    Duration::from_secs(c.jwks_min_refetch_secs),
                    c.jwks_ca_file.as_deref(),
                    algorithms.clone(),
                )
                .map_err(err)?,
            )),
            None if c.jwks_ca_file.is_some() => {
                return Err(err("jwks_ca_file without jwks_uri".into()));
            }
            None => None,
        };
        if keys.is_empty() && remote.is_none() {
            return Err(err("no usable key (jwks_uri, jwks_file or keys)".into()));
        }
        let mut validation = Validation::new(algorithms[0]);
        validation.algorithms = algorithms;
        validation.set_issuer(&[&c.issuer]);
        validation.set_audience(&c.audiences);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        validation.validate_exp = true;
        validation.validate_nbf = true;
        validation.leeway = c.leeway_secs;
        Ok(Issuer {
            name: c.issuer,
            keys,
            remote,
            validation,
            tenants_claim: c.tenants_claim,
            roles_claim: c.roles_claim,
        })
    }

    /// Its `iss`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its keys fetched from `jwks_uri`, if it has one.
    pub(crate) fn remote(&self) -> Option<&Arc<RemoteKeys>> {
        self.remote.as_ref()
    }

    /// Verify a token and give its principal. A token naming a key that none of the
    /// issuer's keys has makes its `jwks_uri` fetched again first (at most once in
    /// `jwks_min_refetch_secs`): the issuer may have started signing with a new key.
    pub async fn verify(&self, token: &str) -> Result<Principal, AuthError> {
        match self.verify_with_keys(token) {
            Err((e, true)) => match &self.remote {
                Some(r) if r.refresh_for_unknown_key().await => {
                    self.verify_with_keys(token).map_err(|(e, _)| e)
                }
                _ => Err(e),
            },
            other => other.map_err(|(e, _)| e),
        }
    }

    /// Verify with the keys in force; on a refusal, whether no key of the issuer was
    /// the one the token names.
    fn verify_with_keys(&self, token: &str) -> Result<Principal, (AuthError, bool)> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| {
            (
                refused("token refused: malformed header or unsupported algorithm"),
                false,
            )
        })?;
        if !self.validation.algorithms.contains(&header.alg) {
            return Err((refused("token refused: algorithm not accepted"), false));
        }
        let fetched = self.remote.as_ref().map(|r| r.keys()).unwrap_or_default();
        let all = || self.keys.iter().chain(fetched.iter());
        let unknown_kid = match &header.kid {
            Some(want) => !all().any(|k| k.kid.as_deref() == Some(want.as_str())),
            None => false,
        };
        let mut tried = false;
        let candidates = all().filter(|k| {
            k.alg == header.alg
                && match (&header.kid, &k.kid) {
                    (Some(want), Some(have)) => want == have,
                    _ => true,
                }
        });
        let mut last = refused("token refused: no key of the issuer for it");
        for k in candidates {
            tried = true;
            // One algorithm per check: the library wants them all of the key's family.
            let mut validation = self.validation.clone();
            validation.algorithms = vec![k.alg];
            match jsonwebtoken::decode::<serde_json::Map<String, Value>>(token, &k.key, &validation)
            {
                Ok(data) => return self.principal(&data.claims).map_err(|e| (e, false)),
                Err(e) => {
                    use jsonwebtoken::errors::ErrorKind as K;
                    let why = match e.kind() {
                        K::InvalidSignature => "bad signature",
                        K::ExpiredSignature => "expired",
                        K::ImmatureSignature => "not valid yet (nbf)",
                        K::InvalidIssuer => "wrong issuer",
                        K::InvalidAudience => "wrong audience",
                        K::MissingRequiredClaim(_) => {
                            "a required claim (exp, iss, aud, sub) is missing"
                        }
                        K::InvalidClaimFormat(_) => "a claim has the wrong type",
                        K::InvalidAlgorithm => "algorithm does not match the key",
                        _ => "invalid",
                    };
                    last = AuthError::Refused(format!("token refused: {why}"));
                    // Only a signature failure may be another key's token.
                    if !matches!(e.kind(), K::InvalidSignature) {
                        return Err((last, false));
                    }
                }
            }
        }
        Err((last, unknown_kid || !tried))
    }

    fn principal(&self, claims: &serde_json::Map<String, Value>) -> Result<Principal, AuthError> {
        let list = |name: &str| -> Vec<String> {
            match claims.get(name) {
                Some(Value::String(s)) => s.split_whitespace().map(str::to_string).collect(),
                Some(Value::Array(a)) => a
                    .iter()
                    .filter_map(|v| v.as_str().map(str::to_string))
                    .collect(),
                _ => Vec::new(),
            }
        };
        let sub = claims.get("sub").and_then(Value::as_str).unwrap_or("");
        let tenants = list(&self.tenants_claim);
        if tenants.iter().any(|t| t == super::EVERY_TENANT) {
            return Err(refused("token refused: a token cannot grant every tenant"));
        }
        // Unknown roles in a token are ignored (an IdP carries roles of other systems).
        let roles: Vec<String> = list(&self.roles_claim)
            .into_iter()
            .filter(|r| super::Role::parse(r).is_some())
            .collect();
        super::keys::principal(format!("jwt:{}#{sub}", self.name), &tenants, &roles)
            .map_err(|e| AuthError::Refused(format!("token refused: {e}")))
    }
}

/// The `iss` of a token, read without verifying it (to choose the issuer whose keys
/// then verify it).
pub(crate) fn unverified_issuer(token: &str) -> Result<String, AuthError> {
    let data = jsonwebtoken::dangerous::insecure_decode::<serde_json::Map<String, Value>>(token)
        .map_err(|_| refused("token refused: malformed"))?;
    data.claims
        .get("iss")
        .and_then(Value::as_str)
        .map(str::to_string)
        .ok_or_else(|| refused("token refused: no issuer"))
}
