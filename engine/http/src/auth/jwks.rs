//! An issuer's keys fetched from its `jwks_uri`, so that a key rotation at the identity
//! provider needs no restart.
//!
//! The set is fetched at start, again every `jwks_refresh_secs` (300 by default), and at
//! once — at most every `jwks_min_refetch_secs` (30 by default) — when a token names a
//! key the last set did not hold (an issuer that starts signing with a new key before
//! the next refresh). A failed fetch keeps the last keys in force and is retried after 5 s,
//! doubling up to the refresh interval; a set without a usable key counts as a failure.
//! Keys published without `alg` (as some providers do) serve each of the issuer's
//! algorithms their type fits; encryption keys are left out.
//! HTTPS only (plain HTTP is allowed to a loopback address: a local sidecar), with the
//! system's trust anchors plus `jwks_ca_file`'s; no redirect to plain HTTP; answers of
//! at most 1 MiB, within 10 s.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use jsonwebtoken::jwk::JwkSet;

use super::jwt::{Key, keys_of_set};

/// The first retry after a failed fetch (then doubling, up to the refresh interval).
const RETRY_FIRST: Duration = Duration::from_secs(5);

/// A fetch's deadline, connection included.
const TIMEOUT: Duration = Duration::from_secs(10);

/// The largest key set read.
const MAX_BYTES: usize = 1 << 20;

/// The keys of one `jwks_uri`.
pub(crate) struct RemoteKeys {
    issuer: String,
    uri: reqwest::Url,
    client: reqwest::Client,
    every: Duration,
    /// How soon after the last fetch a token naming an unknown key makes the set
    /// fetched again (tokens with made-up key ids must not make parcours hammer the
    /// provider).
    min_refetch: Duration,
    /// The issuer's algorithms (for keys of the set that name none).
    accepted: Vec<jsonwebtoken::Algorithm>,
    keys: parcours_runtime::Shared<Vec<Key>>,
    state: Mutex<FetchState>,
    /// One fetch at a time.
    fetching: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for RemoteKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteKeys")
            .field("issuer", &self.issuer)
            .field("uri", &self.uri.as_str())
            .field("every", &self.every)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Default)]
struct FetchState {
    /// The last fetch that succeeded.
    fetched: Option<Instant>,
    /// The last fetch, whatever its outcome.
    attempted: Option<Instant>,
    /// Fetches failed since the last success.
    failures: u32,
}

// Fetches are paced by wall time (the API is not the deterministic core).
#[allow(clippy::disallowed_methods)]
fn now() -> Instant {
    Instant::now()
}

fn loopback(url: &reqwest::Url) -> bool {
    let Some(host) = url.host_str() else {
        return false;
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|a| a.is_loopback())
}

fn client(uri: &reqwest::Url, ca_file: Option<&Path>) -> Result<reqwest::Client, String> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    // The system's anchors; an unreadable one is skipped (rustls-native-certs reports
    // them beside those it read).
    let native = rustls_native_certs::load_native_certs();
    roots.add_parsable_certificates(native.certs);
    if let Some(path) = ca_file {
        let certs = CertificateDer::pem_file_iter(path)
            .map_err(|e| format!("jwks_ca_file {}: {e}", path.display()))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("jwks_ca_file {}: {e}", path.display()))?;
        if certs.is_empty() {
            return Err(format!(
                "jwks_ca_file {}: no certificate in it",
                path.display()
            ));
        }
        for c in certs {
            roots
                .add(c)
                .map_err(|e| format!("jwks_ca_file {}: {e}", path.display()))?;
        }
    }
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| format!("TLS: {e}"))?
    .with_root_certificates(roots)
    .with_no_client_auth();
    reqwest::Client::builder()
        .use_preconfigured_tls(tls)
        .timeout(TIMEOUT)
        .connect_timeout(TIMEOUT)
        .https_only(uri.scheme() == "https")
        .redirect(reqwest::redirect::Policy::limited(3))
        .user_agent(concat!("parcours/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| format!("HTTP client: {e}"))
}

impl RemoteKeys {
    /// Check the address and make the client; nothing is fetched yet.
    pub(crate) fn new(
        issuer: &str,
        uri: &str,
        every: Duration,
        min_refetch: Duration,
        ca_file: Option<&Path>,
        accepted: Vec<jsonwebtoken::Algorithm>,
    ) -> Result<RemoteKeys, String> {
        let parsed = reqwest::Url::parse(uri).map_err(|e| format!("jwks_uri `{uri}`: {e}"))?;
        match parsed.scheme() {
            "https" => {}
            "http" if loopback(&parsed) => {}
            "http" => {
                return Err(format!(
                    "jwks_uri `{uri}`: use https (plain http only to a loopback address)"
                ));
            }
            other => return Err(format!("jwks_uri `{uri}`: unsupported scheme `{other}`")),
        }
        if every < Duration::from_secs(10) {
            return Err("jwks_refresh_secs: at least 10".into());
        }
        if min_refetch < Duration::from_secs(1) {
            return Err("jwks_min_refetch_secs: at least 1".into());
        }
        Ok(RemoteKeys {
            issuer: issuer.to_string(),
            client: client(&parsed, ca_file)?,
            uri: parsed,
            every,
            min_refetch,
            accepted,
            keys: parcours_runtime::Shared::new(Vec::new()),
            state: Mutex::new(FetchState::default()),
            fetching: tokio::sync::Mutex::new(()),
        })
    }

    /// Its address.
    pub(crate) fn uri(&self) -> &str {
        self.uri.as_str()
    }

    /// The keys in force (none before a first successful fetch).
    pub(crate) fn keys(&self) -> Arc<Vec<Key>> {
        self.keys.current()
    }

    /// Take another set's keys (the same address, in an authentication configuration
    /// read again), until this one's own fetch succeeds.
    pub(crate) fn adopt(&self, other: &RemoteKeys) {
        if self.keys().is_empty() {
            self.keys.replace(other.keys());
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, FetchState> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Whether its last fetch failed.
    pub(crate) fn failing(&self) -> bool {
        self.state().failures > 0
    }

    /// Whether a fetch is due: never fetched, the refresh interval passed, or the
    /// retry's delay after a failure.
    fn due(&self, at: Instant) -> bool {
        let s = self.state();
        let wait = match s.failures {
            0 => self.every,
            n => RETRY_FIRST
                .saturating_mul(1 << (n - 1).min(16))
                .min(self.every),
        };
        match (s.failures, s.fetched, s.attempted) {
            (0, Some(last), _) => at.duration_since(last) >= wait,
            (_, _, Some(last)) => at.duration_since(last) >= wait,
            _ => true,
        }
    }

    /// Fetch the set when due (the periodic refresh).
    pub(crate) async fn refresh_if_due(&self) {
        let _one = self.fetching.lock().await;
        if self.due(now()) {
            let _ = self.fetch().await;
        }
    }

    /// A token named a key the set does not hold: fetch it again, unless it was
    /// fetched less than `min_refetch` ago. Whether the keys may have
    /// changed since the caller looked.
    pub(crate) async fn refresh_for_unknown_key(&self) -> bool {
        let asked = now();
        let _one = self.fetching.lock().await;
        if let Some(last) = self.state().attempted {
            if last >= asked {
                // Fetched while this caller waited for the one in flight.
                return true;
            }
            if asked.duration_since(last) < self.min_refetch {
                return false;
            }
        }
        self.fetch().await.is_ok()
    }

    /// Fetch the set now (the caller holds `fetching`); the keys in force change only
    /// on success.
    async fn fetch(&self) -> Result<usize, String> {
        let outcome = self.download().await.and_then(|set| {
            let keys = keys_of_set(&set, &self.accepted)?;
            if keys.is_empty() {
                return Err("the set holds no usable signing key".into());
            }
            Ok(keys)
        });
        let metrics = parcours_runtime::metrics::metrics();
        let mut s = self.state();
        s.attempted = Some(now());
        match outcome {
            Ok(keys) => {
                let n = keys.len();
                if s.failures > 0 {
                    tracing::info!(issuer = %self.issuer, keys = n, "token issuer keys fetched again");
                }
                s.failures = 0;
                s.fetched = s.attempted;
                drop(s);
                self.keys.replace(keys);
                metrics
                    .auth_jwks_fetches
                    .with_label_values(&["applied"])
                    .inc();
                Ok(n)
            }
            Err(e) => {
                s.failures = s.failures.saturating_add(1);
                let failures = s.failures;
                drop(s);
                tracing::warn!(
                    issuer = %self.issuer,
                    uri = %self.uri,
                    failures,
                    error = %e,
                    "could not fetch the token issuer's keys; the last ones stay in force"
                );
                metrics
                    .auth_jwks_fetches
                    .with_label_values(&["failed"])
                    .inc();
                Err(e)
            }
        }
    }

    async fn download(&self) -> Result<JwkSet, String> {
        let mut answer = self
            .client
            .get(self.uri.clone())
            .header(reqwest::header::ACCEPT, "application/json")
            .send()
            .await
            .map_err(|e| describe(&e))?;
        let status = answer.status();
        if !status.is_success() {
            return Err(format!("{}: HTTP {status}", self.uri));
        }
        let mut body = Vec::new();
        while let Some(chunk) = answer
            .chunk()
            .await
            .map_err(|e| format!("{}: {}", self.uri, describe(&e)))?
        {
            if body.len() + chunk.len() > MAX_BYTES {
                return Err(format!(
                    "{}: the answer exceeds {MAX_BYTES} bytes",
                    self.uri
                ));
            }
            body.extend_from_slice(&chunk);
        }
        serde_json::from_slice(&body).map_err(|e| format!("{}: not a JWKS: {e}", self.uri))
    }
}

/// An HTTP client error with its causes (reqwest's own message, which names the URL,
/// stops at the first).
fn describe(e: &reqwest::Error) -> String {
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}
