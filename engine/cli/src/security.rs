//! `parcours serve`'s security settings: who may call the HTTP API (`--auth`, or the
//! local key the embedded mode generates), TLS for the HTTP listener, the MLLP peers
//! allowed, requests per caller, the audit trail's retention. Wiring only: the checks
//! are in `parcours-http` (`auth`, `routes`) and `parcours-hl7v2` (`PeerNet`).

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use parcours_http::auth::keys::{self, Secret};
use parcours_http::auth::{AuthConfig, Authenticator, SharedAuthenticator};
use parcours_store::AuditLog;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

/// The security flags of `serve`.
#[derive(Clone, Debug, clap::Args)]
pub(crate) struct SecurityArgs {
    /// Who may call the HTTP API: a YAML file of API keys (their SHA-256) and token
    /// issuers (deploy/auth.example.yaml). Required with a PostgreSQL log; without it, a SQLite
    /// log gets a generated key in `<log>.api-key` (mode 0600) — there are no default
    /// credentials.
    #[arg(long, env = "PARCOURS_AUTH")]
    pub(crate) auth: Option<PathBuf>,
    /// TLS for the HTTP listener: certificate chain (PEM).
    #[arg(long, env = "PARCOURS_HTTP_TLS_CERT", requires = "http_tls_key")]
    pub(crate) http_tls_cert: Option<PathBuf>,
    /// TLS for the HTTP listener: private key (PEM).
    #[arg(long, env = "PARCOURS_HTTP_TLS_KEY", requires = "http_tls_cert")]
    pub(crate) http_tls_key: Option<PathBuf>,
    /// Requests a second per caller (API key or token subject), on average.
    #[arg(long, default_value_t = 1000, env = "PARCOURS_HTTP_RATE")]
    pub(crate) http_rate: u32,
    /// Requests per caller in a burst.
    #[arg(long, default_value_t = 2000, env = "PARCOURS_HTTP_BURST")]
    pub(crate) http_burst: u32,
    /// Peers allowed to connect to the MLLP listener: addresses or networks
    /// (`10.1.2.3`, `10.1.0.0/16`), comma-separated. Required with --mllp on a
    /// non-loopback address.
    #[arg(long, env = "PARCOURS_MLLP_ALLOW", value_delimiter = ',')]
    pub(crate) mllp_allow: Vec<parcours_hl7v2::mllp::PeerNet>,
    /// Days the audit trail keeps its entries (older ones are purged daily).
    #[arg(long, default_value_t = 365, env = "PARCOURS_AUDIT_RETENTION_DAYS")]
    pub(crate) audit_retention_days: u32,
}

/// The local key file of the embedded mode: next to the SQLite log.
pub(crate) fn local_key_path(store: &str) -> PathBuf {
    crate::erase::beside_log(store, "api-key")
}

/// Read the local key, or create it (mode 0600) with a new random key.
pub(crate) fn load_or_create_key(path: &Path) -> anyhow::Result<Secret> {
    let candidate = keys::generate().context("random bytes for the API key")?;
    // Made once even when several processes start together (`create_once`).
    let bytes = parcours_identity::key_file::create_once(
        path,
        format!("{}\n", candidate.expose()).as_bytes(),
    )
    .with_context(|| format!("reading or creating the API key {}", path.display()))?;
    let text = String::from_utf8_lossy(&bytes);
    let key = text.trim();
    anyhow::ensure!(
        key.len() >= 32,
        "{} holds no usable API key: remove it to get a new one",
        path.display()
    );
    Ok(Secret::new(key))
}

/// What `serve` says when a PostgreSQL log comes without an access file.
const NO_AUTH_WITH_POSTGRES: &str = "with a PostgreSQL log, give --auth FILE (PARCOURS_AUTH): the API keys and token issuers allowed to call the API (see deploy/auth.example.yaml); there are no default credentials";

/// The access settings checked as `serve` starts, before it opens or writes anything: a
/// PostgreSQL log needs `--auth`, and the file given must read. (A mistake found after
/// the log was migrated and the pathways published into it would leave them there.)
pub(crate) fn check_access(args: &SecurityArgs, postgres: bool) -> anyhow::Result<()> {
    match &args.auth {
        Some(path) => {
            AuthConfig::from_file(path)?;
            Ok(())
        }
        None if postgres => anyhow::bail!(NO_AUTH_WITH_POSTGRES),
        None => Ok(()),
    }
}

/// How the API checks its callers, and the local key file when one was generated.
pub(crate) fn authenticator(
    args: &SecurityArgs,
    store: &str,
    postgres: bool,
) -> anyhow::Result<(Authenticator, Option<PathBuf>)> {
    match &args.auth {
        Some(path) => {
            let config = AuthConfig::from_file(path)?;
            Ok((Authenticator::new(config)?, None))
        }
        None if postgres => anyhow::bail!(NO_AUTH_WITH_POSTGRES),
        None => {
            let path = local_key_path(store);
            let key = load_or_create_key(&path)?;
            Ok((Authenticator::new(AuthConfig::local(&key))?, Some(path)))
        }
    }
}

/// How often the `--auth` file and the key files it names are read again to see whether
/// they changed (a SIGHUP reads them at once).
pub(crate) const AUTH_RELOAD_EVERY: Duration = Duration::from_secs(10);

/// Keep who may call the API current without a restart:
/// - the issuers' keys from their `jwks_uri` ([`SharedAuthenticator::keep_keys_fresh`]);
/// - with `--auth FILE`, the file: read again every [`AUTH_RELOAD_EVERY`] and at each
///   SIGHUP, with the files it names (saved JWKS, PEM keys, CAs). A change of any of
///   them that leaves a valid configuration is put in force (an API key revoked or
///   removed is refused from then on, a new one accepted); one that is not is logged
///   with its error, `parcours_auth_reload_failing` goes to 1, and the previous file
///   stays in force.
///
/// A SIGHUP never stops the process (without `--auth` it is only logged).
pub(crate) fn spawn_auth_upkeep(
    auth: Option<PathBuf>,
    shared: SharedAuthenticator,
    stop: CancellationToken,
) {
    let keys = shared.clone();
    let keys_stop = stop.clone();
    tokio::spawn(async move {
        tokio::select! {
            () = keys_stop.cancelled() => {}
            () = keys.keep_keys_fresh() => {}
        }
    });
    // Installed before anything is served: from then on a SIGHUP is this task's.
    let mut hangup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        Ok(h) => Some(h),
        Err(e) => {
            tracing::warn!(error = %e, "no SIGHUP handler: the --auth file is read again every 10 s only");
            None
        }
    };
    let mut reload = auth.map(|path| AuthReload::new(path, shared));
    tokio::spawn(async move {
        loop {
            let asked = tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(AUTH_RELOAD_EVERY) => false,
                Some(()) = async {
                    match &mut hangup {
                        Some(h) => h.recv().await,
                        None => std::future::pending().await,
                    }
                } => true,
            };
            match &mut reload {
                Some(r) => r.check(asked).await,
                None if asked => tracing::info!(
                    "SIGHUP: nothing to read again (no --auth file: the embedded mode's local key)"
                ),
                None => {}
            }
        }
    });
}

/// What the `--auth` file and the files it names held when last read: a change of any
/// of them calls for reading the file again.
#[derive(Debug, PartialEq, Eq)]
struct AuthFiles {
    /// The file's bytes.
    file: Vec<u8>,
    /// Each file it names (a saved JWKS, PEM keys, a CA), and its bytes (or none: it
    /// could not be read, which the reading then reports).
    named: Vec<(PathBuf, Option<Vec<u8>>)>,
}

impl AuthFiles {
    /// `file` (the `--auth` file at `path`), and the files it names read now (small
    /// local files: read in place).
    fn of(file: Vec<u8>, path: &Path) -> AuthFiles {
        let mut named = Vec::new();
        // A file that does not parse names nothing; the reading reports it.
        if let Ok(config) = AuthConfig::from_bytes(&file, path) {
            for f in config.files() {
                let bytes = std::fs::read(&f).ok();
                named.push((f, bytes));
            }
        }
        AuthFiles { file, named }
    }
}

/// The `--auth` file's re-reading.
struct AuthReload {
    path: PathBuf,
    shared: SharedAuthenticator,
    /// What was last read (in force, or refused).
    last: Option<AuthFiles>,
    /// Whether `last` is in force.
    applied: bool,
    /// Whether the last reading failed (to log a run of failures once).
    failing: bool,
}

impl AuthReload {
    fn new(path: PathBuf, shared: SharedAuthenticator) -> AuthReload {
        // The files as `serve` read them at start.
        let last = std::fs::read(&path)
            .ok()
            .map(|bytes| AuthFiles::of(bytes, &path));
        AuthReload {
            path,
            shared,
            last,
            applied: true,
            failing: false,
        }
    }

    fn set_failing(&mut self, failing: bool) {
        self.failing = failing;
        parcours_runtime::metrics::metrics()
            .auth_reload_failing
            .set(i64::from(failing));
    }

    /// Read the file; put it in force if it changed (or `asked`: a SIGHUP) and is valid.
    async fn check(&mut self, asked: bool) {
        let metrics = parcours_runtime::metrics::metrics();
        let path = self.path.display().to_string();
        let bytes = match tokio::fs::read(&self.path).await {
            Ok(b) => b,
            Err(e) => {
                // Also the moment of a replacement that is not atomic: tried again later.
                if asked || !self.failing {
                    tracing::error!(file = %path, error = %e, "could not read the --auth file again; the one read before stays in force");
                }
                self.set_failing(true);
                return;
            }
        };
        let files = AuthFiles::of(bytes, &self.path);
        if !asked && self.last.as_ref() == Some(&files) {
            // Unchanged: failing still if what it says was refused; no longer if it
            // only could not be read for a moment.
            self.set_failing(!self.applied);
            return;
        }
        let read = AuthConfig::from_bytes(&files.file, &self.path).and_then(Authenticator::new);
        self.last = Some(files);
        match read {
            Ok(authenticator) => {
                // The new issuers' keys first, so that tokens go on being accepted.
                let _ = tokio::time::timeout(Duration::from_secs(15), authenticator.refresh_keys())
                    .await;
                let summary = authenticator.summary();
                self.shared.replace(authenticator);
                self.applied = true;
                metrics.auth_reloads.with_label_values(&["applied"]).inc();
                self.set_failing(false);
                tracing::info!(file = %path, holds = %summary, "--auth file read again: in force");
            }
            Err(e) => {
                self.applied = false;
                metrics.auth_reloads.with_label_values(&["failed"]).inc();
                self.set_failing(true);
                tracing::error!(file = %path, error = %e, "--auth file refused; the one read before stays in force");
            }
        }
    }
}

/// Refuse an MLLP listener open to the network without an allow list.
pub(crate) fn check_mllp(addr: std::net::SocketAddr, args: &SecurityArgs) -> anyhow::Result<()> {
    if args.mllp_allow.is_empty() && !addr.ip().is_loopback() {
        anyhow::bail!(
            "--mllp {addr} listens beyond this machine: give --mllp-allow with the addresses or networks of the interface engines allowed to send"
        );
    }
    Ok(())
}

/// Purge the audit trail's entries older than the retention, now and every day.
pub(crate) fn spawn_audit_purge<S: AuditLog + Clone + 'static>(
    store: S,
    days: u32,
    stop: CancellationToken,
) {
    tokio::spawn(async move {
        loop {
            #[allow(clippy::disallowed_methods)]
            let now = jiff::Timestamp::now();
            let before = now - jiff::SignedDuration::from_hours(24 * i64::from(days));
            match store.purge_audit(before).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(
                    removed = n,
                    days,
                    "audit trail: entries past retention purged"
                ),
                Err(e) => tracing::warn!(error = %e, "audit trail: purge failed; retried tomorrow"),
            }
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(Duration::from_secs(24 * 3600)) => {}
            }
        }
    });
}

/// A TLS listener for axum: handshakes run on their own tasks (a slow client holds up
/// no one), bounded in time; connections come out once their handshake is done.
pub(crate) struct TlsListener {
    rx: tokio::sync::mpsc::Receiver<(
        tokio_rustls::server::TlsStream<TcpStream>,
        std::net::SocketAddr,
    )>,
    local: std::net::SocketAddr,
}

impl TlsListener {
    pub(crate) fn new(
        listener: TcpListener,
        acceptor: parcours_hl7v2::tls::TlsAcceptor,
        stop: CancellationToken,
    ) -> std::io::Result<TlsListener> {
        let local = listener.local_addr()?;
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        tokio::spawn(async move {
            loop {
                let (stream, peer) = tokio::select! {
                    () = stop.cancelled() => return,
                    a = listener.accept() => match a {
                        Ok(a) => a,
                        Err(e) => {
                            tracing::warn!(error = %e, "https accept failed");
                            tokio::time::sleep(Duration::from_millis(100)).await;
                            continue;
                        }
                    },
                };
                let acceptor = acceptor.clone();
                let tx = tx.clone();
                tokio::spawn(async move {
                    match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(stream))
                        .await
                    {
                        Ok(Ok(tls)) => {
                            let _ = tx.send((tls, peer)).await;
                        }
                        Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                        Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                    }
                });
            }
        });
        Ok(TlsListener { rx, local })
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = tokio_rustls::server::TlsStream<TcpStream>;
    type Addr = std::net::SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.rx.recv().await {
            Some(c) => c,
            // The accept loop stopped (shutdown): wait for the server to stop too.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local)
    }
}

/// Who runs a command, for the audit trail: `cli:<command>:<OS user>`.
pub(crate) fn cli_actor(command: &str) -> String {
    let user = std::env::var("USER")
        .or_else(|_| std::env::var("LOGNAME"))
        .unwrap_or_else(|_| "unknown".into());
    format!("cli:{command}:{user}")
}

/// Record what a command changed in the audit trail (pathway publications,
/// migrations); a failure to record fails the command.
pub(crate) async fn audit_change<S: AuditLog>(
    store: &S,
    actor: &str,
    action: &str,
    entries: Vec<(Option<String>, Option<String>, String)>,
) -> anyhow::Result<()> {
    if entries.is_empty() {
        return Ok(());
    }
    #[allow(clippy::disallowed_methods)]
    let at = jiff::Timestamp::now();
    let entries = entries
        .into_iter()
        .map(|(target, tenant, detail)| parcours_store::AuditEntry {
            at,
            actor: actor.to_string(),
            action: action.to_string(),
            target,
            tenant,
            outcome: parcours_store::AuditOutcome::Allowed,
            detail: Some(detail),
        })
        .collect();
    store
        .audit(entries)
        .await
        .context("writing the audit trail")?;
    Ok(())
}

/// `parcours api-key`.
#[derive(Debug, clap::Args)]
pub(crate) struct ApiKeyArgs {
    /// The key's id: the audit trail names it; a rotation adds a key of a new id.
    #[arg(long)]
    id: String,
    /// Who holds it (a system: `chu-nord-interface-engine`).
    #[arg(long)]
    principal: String,
    /// A tenant (CPTS id) it may touch; repeat for each.
    #[arg(long = "tenant", required = true)]
    tenants: Vec<String>,
    /// A role: `coordinator`, `care-team:<task role>`, `integration`, `ops`; repeat for each.
    #[arg(long = "role", required = true)]
    roles: Vec<String>,
}

/// An API key's entry as YAML lines under `api_keys:`. Tenants and roles are quoted: a
/// plain `*` (every tenant) would be a YAML alias, and roles hold colons.
fn entry_yaml(entry: &keys::ApiKeyConfig) -> String {
    let list = |v: &[String]| {
        v.iter()
            .map(|s| serde_json::Value::from(s.as_str()).to_string())
            .collect::<Vec<_>>()
            .join(", ")
    };
    format!(
        "  - id: {}\n    principal: {}\n    sha256: {}\n    tenants: [{}]\n    roles: [{}]",
        serde_json::Value::from(entry.id.as_str()),
        serde_json::Value::from(entry.principal.as_str()),
        entry.sha256,
        list(&entry.tenants),
        list(&entry.roles)
    )
}

/// Print a new key and its entry for the `--auth` file.
pub(crate) fn api_key(args: &ApiKeyArgs) -> anyhow::Result<()> {
    let key = keys::generate().context("random bytes for the API key")?;
    let entry = keys::ApiKeyConfig {
        id: args.id.clone(),
        principal: args.principal.clone(),
        sha256: keys::sha256_hex(key.expose()),
        tenants: args.tenants.clone(),
        roles: args.roles.clone(),
        revoked: false,
    };
    // The same checks as at start (known roles, tenant ids).
    keys::ApiKeys::new(vec![entry.clone()])?;
    println!(
        "# The key: give it to {} once (it is kept nowhere).",
        entry.principal
    );
    println!("{}", key.expose());
    println!("# Its entry under `api_keys:` in the --auth file:");
    println!("{}", entry_yaml(&entry));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What `parcours api-key` prints reads back as the same entry, `*` and roles with
    /// colons included (a plain `[*]` is a YAML alias: the file would not load).
    #[test]
    fn a_printed_entry_reads_back_as_itself() {
        let entry = keys::ApiKeyConfig {
            id: "k: 2026".into(),
            principal: "chu-nord".into(),
            sha256: keys::sha256_hex("pck_x"),
            tenants: vec!["*".into(), "cpts-a".into()],
            roles: vec!["care-team:gp".into(), "ops".into()],
            revoked: false,
        };
        let text = format!("api_keys:\n{}\n", entry_yaml(&entry));
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("auth.yaml");
        std::fs::write(&path, &text).expect("written");
        let config = AuthConfig::from_file(&path).unwrap_or_else(|e| panic!("{text}\n{e}"));
        let [read] = config.api_keys.as_slice() else {
            panic!("one entry: {text}");
        };
        assert_eq!(
            (
                &read.id,
                &read.principal,
                &read.sha256,
                &read.tenants,
                &read.roles
            ),
            (
                &entry.id,
                &entry.principal,
                &entry.sha256,
                &entry.tenants,
                &entry.roles
            )
        );
        assert!(!read.revoked);
    }

    /// A signing key of the HTTP tests, by key id.
    fn signing_key(kid: &str) -> jsonwebtoken::EncodingKey {
        let file = if kid == "k1" {
            "test-rsa.key"
        } else {
            "other-rsa.key"
        };
        let pem = std::fs::read(
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../http/tests/data")
                .join(file),
        )
        .expect("key");
        jsonwebtoken::EncodingKey::from_rsa_pem(&pem).expect("rsa")
    }

    fn jwks_of(kid: &str) -> String {
        use jsonwebtoken::jwk::Jwk;
        let mut jwk =
            Jwk::from_encoding_key(&signing_key(kid), jsonwebtoken::Algorithm::RS256).expect("jwk");
        jwk.common.key_id = Some(kid.into());
        serde_json::json!({ "keys": [jwk] }).to_string()
    }

    fn bearer(kid: &str) -> axum::http::HeaderMap {
        #[allow(clippy::disallowed_methods)]
        let now = jiff::Timestamp::now().as_second();
        let claims = serde_json::json!({
            "iss": "https://idp.test", "aud": "parcours", "sub": "rpps-1",
            "exp": now + 300, "parcours_tenants": ["cpts-a"], "parcours_roles": ["coordinator"],
        });
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
        header.kid = Some(kid.into());
        let token = jsonwebtoken::encode(&header, &claims, &signing_key(kid)).expect("sign");
        let mut h = axum::http::HeaderMap::new();
        h.insert(
            "authorization",
            format!("Bearer {token}").parse().expect("header"),
        );
        h
    }

    /// An issuer's saved JWKS replaced (the `--auth` file itself unchanged) is in force
    /// at the next reading, without a SIGHUP.
    #[tokio::test]
    async fn a_key_file_the_auth_file_names_is_read_again_when_it_changes() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("auth.yaml");
        std::fs::write(dir.path().join("keys.json"), jwks_of("k1")).expect("keys");
        std::fs::write(
            &path,
            "issuers:\n  - issuer: https://idp.test\n    audiences: [parcours]\n    \
             jwks_file: keys.json\n    algorithms: [RS256]\n",
        )
        .expect("auth");
        let shared = SharedAuthenticator::new(
            Authenticator::new(AuthConfig::from_file(&path).expect("config")).expect("auth"),
        );
        let mut reload = AuthReload::new(path, shared.clone());
        shared.authenticate(&bearer("k1")).await.expect("k1");
        shared
            .authenticate(&bearer("k2"))
            .await
            .expect_err("k2 unknown");
        reload.check(false).await;
        shared
            .authenticate(&bearer("k1"))
            .await
            .expect("nothing changed");

        // The issuer rotated its key; the saved set is replaced.
        std::fs::write(dir.path().join("keys.json"), jwks_of("k2")).expect("keys");
        reload.check(false).await;
        shared
            .authenticate(&bearer("k2"))
            .await
            .expect("k2 in force");
        shared
            .authenticate(&bearer("k1"))
            .await
            .expect_err("k1 gone");
    }

    /// The annotated example in deploy/ reads, and its publisher may publish.
    #[test]
    fn the_shipped_auth_example_reads() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/auth.example.yaml");
        let config = AuthConfig::from_file(&path).unwrap_or_else(|e| panic!("{e}"));
        assert!(
            config
                .api_keys
                .iter()
                .any(|k| k.tenants == ["*"] && k.roles == ["coordinator"] && !k.revoked)
        );
        assert!(!config.issuers.is_empty());
    }
}
