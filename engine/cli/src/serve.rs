//! `parcours serve`: the engine as a service. Wiring only: configuration, logging,
//! signals; the work is in the runtime and adapter crates.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use parcours_runtime::{
    Engine, EngineConfig, InProcessBus, PathwayRegistry, ServiceConfig, SystemClock, service,
};
use parcours_store::{AuditLog, EventStore, PatientKeys};
use parcours_store_sqlite::SqliteStore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// What `serve` was asked for.
#[derive(Clone, Debug)]
pub(crate) struct Settings {
    pub(crate) http: SocketAddr,
    pub(crate) store: String,
    pub(crate) pathways: PathBuf,
    pub(crate) shutdown_grace: Duration,
    pub(crate) cache_patients: usize,
    /// The tenants served (empty: every tenant).
    pub(crate) tenants: Vec<String>,
    /// The catch-up grace of timers already due when scheduled
    /// (`EngineConfig::timer_catch_up`).
    pub(crate) timer_catch_up: jiff::SignedDuration,
    /// Group commits written at once (0: by the log, see `commits_in_flight`).
    pub(crate) commits_in_flight: usize,
    pub(crate) max_body: usize,
    /// The key file of pseudonymous subject keys (created if missing).
    pub(crate) identity_key: PathBuf,
    /// The vault's master key (created if missing) and those it replaces (a rotation
    /// under way: they only unwrap).
    pub(crate) vault_keys: crate::vault_keys::VaultKeyArgs,
    /// The MLLP listener, if any, and the tenant its messages belong to.
    pub(crate) mllp: Option<(SocketAddr, String)>,
    /// TLS for MLLP: certificate chain, private key, and a client CA for mutual TLS.
    pub(crate) mllp_tls: Option<(PathBuf, PathBuf, Option<PathBuf>)>,
    /// Accept test INS identities (test platforms only).
    pub(crate) allow_test_ins: bool,
    /// The MLLP listener's limits.
    pub(crate) mllp_options: MllpArgs,
    /// Production mode: NATS JetStream for intake and effects.
    pub(crate) nats: Option<parcours_nats::NatsConfig>,
    /// How long a forwarded event's caller waits for the owner's commit.
    pub(crate) forward_wait: Duration,
    /// Who may call, TLS, MLLP peers, audit retention.
    pub(crate) security: crate::security::SecurityArgs,
}

/// The MLLP listener's limits (flags, `PARCOURS_MLLP_…` variables, `--config` keys).
#[derive(Clone, Debug, clap::Args)]
pub(crate) struct MllpArgs {
    /// MLLP: seconds a connection may go without a complete message before it is
    /// closed.
    #[arg(long, default_value_t = 600, env = "PARCOURS_MLLP_IDLE_TIMEOUT")]
    pub(crate) mllp_idle_timeout: u64,
    /// MLLP: seconds a message has, once its frame has started, to arrive whole; else
    /// the connection is closed unanswered (the sender resends). Bounds how long a
    /// stalled or slow sender holds a connection.
    #[arg(long, default_value_t = 30, env = "PARCOURS_MLLP_FRAME_TIMEOUT")]
    pub(crate) mllp_frame_timeout: u64,
    /// MLLP: connections served at once; more are closed at once.
    #[arg(long, default_value_t = 64, env = "PARCOURS_MLLP_MAX_CONNECTIONS")]
    pub(crate) mllp_max_connections: usize,
    /// MLLP: connections served at once from one peer address, so one sender cannot
    /// take them all; more from it are closed at once.
    #[arg(
        long,
        default_value_t = 16,
        env = "PARCOURS_MLLP_MAX_CONNECTIONS_PER_PEER"
    )]
    pub(crate) mllp_max_connections_per_peer: usize,
    /// MLLP: largest message, in bytes (the frame, and the HL7 guard's message size);
    /// a larger one is read to its end, answered AR with its size and this limit, its
    /// connection closed, and kept as a dead letter truncated to this size. Parsing
    /// cost grows with it: raise it only for senders known to need it.
    #[arg(long, default_value_t = 1 << 20, env = "PARCOURS_MLLP_MAX_FRAME_BYTES")]
    pub(crate) mllp_max_frame_bytes: usize,
    /// MLLP: the character set of messages whose MSH-18 is empty: `UNICODE UTF-8`, or
    /// `8859/1` for senders known to send ISO-8859-1 without saying so (many French
    /// hospital systems); also `8859/15`, `ASCII` (MSH-18 names).
    #[arg(
        long,
        default_value = "UNICODE UTF-8",
        env = "PARCOURS_MLLP_DEFAULT_CHARSET",
        value_parser = parse_charset
    )]
    pub(crate) mllp_default_charset: parcours_hl7v2::Charset,
    /// MLLP: the MSH-11 processing ids accepted (comma-separated); others get AR 202.
    /// `P` (production) only, unless this parcours is a test platform talking to a test
    /// interface (`T` training, `D` debugging): those messages drive care pathways too.
    #[arg(
        long,
        default_value = "P",
        env = "PARCOURS_MLLP_PROCESSING_IDS",
        value_delimiter = ',',
        value_parser = parse_processing_id
    )]
    pub(crate) mllp_processing_ids: Vec<String>,
    /// MLLP: the assigning authority of a sending facility's patient identifiers sent
    /// without one (PID-3/MRG-1 with CX-4 empty, of type PI, MR, MRN, PT or none: its own
    /// record numbers), as `FACILITY=AUTHORITY`: FACILITY as
    /// MSH-4 names it (namespace id or universal id), AUTHORITY as CX-4 would (its IPP
    /// domain's OID): `CHU-NORD=1.2.250.1.211.10.200.2`. Repeat the flag, or separate
    /// with commas. Such an identifier then gets the key it gets with its authority written
    /// out (over HL7 v2 or FHIR); without an entry it is not used, and a message naming
    /// its patient by nothing else is answered AE 204 (an identifier without its authority
    /// is ambiguous across facilities).
    #[arg(
        long,
        value_name = "FACILITY=AUTHORITY",
        env = "PARCOURS_MLLP_ASSIGNING_AUTHORITY",
        value_delimiter = ',',
        value_parser = parse_assigning_authority
    )]
    pub(crate) mllp_assigning_authority: Vec<(String, String)>,
    /// MLLP: a file of the labs' local observation codes and their LOINC codes, for
    /// ORU^R01 results coded only locally: CSV lines `system,code,loinc` (system =
    /// OBX-3.3, `local` when empty; `;` also separates), or a YAML map
    /// `system|code: loinc` (`.yaml`, `.yml`). Read and checked at start; a bad line
    /// stops it with file:line. Without it, such results keep their local code and no
    /// guard on a LOINC code matches them.
    #[arg(
        long,
        value_name = "FILE",
        env = "PARCOURS_MLLP_LOCAL_CODES",
        value_parser = crate::local_codes::parse_file
    )]
    pub(crate) mllp_local_codes: Option<crate::local_codes::LocalCodes>,
}

/// An MSH-18 name parcours decodes.
fn parse_charset(s: &str) -> Result<parcours_hl7v2::Charset, String> {
    parcours_hl7v2::Charset::from_msh18(s).ok_or_else(|| {
        format!(
            "`{s}` is not a character set parcours reads: UNICODE UTF-8, 8859/1, 8859/15, CP1252, ASCII"
        )
    })
}

/// `FACILITY=AUTHORITY` (`--mllp-assigning-authority`).
fn parse_assigning_authority(s: &str) -> Result<(String, String), String> {
    let usable = |v: &str| {
        !v.is_empty()
            && !v
                .chars()
                .any(|c| c.is_control() || matches!(c, '|' | '^' | '~' | '\\' | '&'))
    };
    match s.split_once('=') {
        Some((facility, authority)) if usable(facility.trim()) && usable(authority.trim()) => {
            Ok((facility.trim().to_owned(), authority.trim().to_owned()))
        }
        _ => Err(format!(
            "`{s}` is not FACILITY=AUTHORITY (MSH-4's namespace or universal id, then the assigning authority of its identifiers: CHU-NORD=1.2.250.1.211.10.200.2)"
        )),
    }
}

/// An HL7 processing id (table 0103).
fn parse_processing_id(s: &str) -> Result<String, String> {
    let id = s.trim().to_ascii_uppercase();
    if matches!(id.as_str(), "P" | "T" | "D") {
        Ok(id)
    } else {
        Err(format!(
            "`{s}` is not a processing id: P (production), T (training), D (debugging)"
        ))
    }
}

impl MllpArgs {
    /// The listener's settings (`allowed_peers` from `--mllp-allow`).
    pub(crate) fn server_config(
        &self,
        allowed_peers: Vec<parcours_hl7v2::mllp::PeerNet>,
    ) -> anyhow::Result<parcours_hl7v2::mllp::ServerConfig> {
        let positive = [
            ("--mllp-idle-timeout", self.mllp_idle_timeout as usize),
            ("--mllp-frame-timeout", self.mllp_frame_timeout as usize),
            ("--mllp-max-connections", self.mllp_max_connections),
            (
                "--mllp-max-connections-per-peer",
                self.mllp_max_connections_per_peer,
            ),
            ("--mllp-max-frame-bytes", self.mllp_max_frame_bytes),
        ];
        if let Some((flag, _)) = positive.iter().find(|(_, v)| *v == 0) {
            anyhow::bail!("{flag} 0: give at least 1");
        }
        Ok(parcours_hl7v2::mllp::ServerConfig {
            idle_timeout: Duration::from_secs(self.mllp_idle_timeout),
            frame_timeout: Duration::from_secs(self.mllp_frame_timeout),
            max_connections: self.mllp_max_connections,
            max_connections_per_peer: self.mllp_max_connections_per_peer,
            max_frame_bytes: self.mllp_max_frame_bytes,
            allowed_peers,
            ..parcours_hl7v2::mllp::ServerConfig::default()
        })
    }

    /// The intake's settings for the listener's tenant.
    pub(crate) fn intake_config(
        &self,
        tenant: &str,
        pseudonymizer: parcours_identity::Pseudonymizer,
    ) -> parcours_hl7v2::IntakeConfig {
        let mut config = parcours_hl7v2::IntakeConfig::new(tenant, pseudonymizer);
        // The guard refuses what the frame allows through otherwise.
        config.caps.max_message_bytes = self.mllp_max_frame_bytes;
        config.default_charset = self.mllp_default_charset;
        config.processing_ids = self.mllp_processing_ids.clone();
        config.assigning_authorities = self.mllp_assigning_authority.iter().cloned().collect();
        if let Some(local) = &self.mllp_local_codes {
            config.local_codes = local.codes.clone();
        }
        config
    }
}

/// The NATS flags of `serve`.
#[derive(Debug)]
pub(crate) struct NatsArgs {
    pub(crate) urls: Vec<String>,
    pub(crate) partitions: u16,
    pub(crate) creds: Option<PathBuf>,
    pub(crate) nkey_seed_file: Option<PathBuf>,
    pub(crate) user: Option<(String, String)>,
    pub(crate) ca: Option<PathBuf>,
    pub(crate) cert: Option<(PathBuf, PathBuf)>,
    pub(crate) replicas: usize,
    pub(crate) batches_in_flight: usize,
}

/// The NATS adapter's configuration from the flags; at most one way to authenticate.
pub(crate) fn nats_config(a: NatsArgs) -> anyhow::Result<parcours_nats::NatsConfig> {
    use parcours_nats::{Auth, NatsConfig, Secret};
    let mut c = NatsConfig::default();
    c.connection.urls = a.urls;
    c.partitions = a.partitions;
    c.streams.replicas = a.replicas;
    c.consumer.batches_in_flight = a.batches_in_flight;
    let ways = usize::from(a.creds.is_some())
        + usize::from(a.nkey_seed_file.is_some())
        + usize::from(a.user.is_some());
    if ways > 1 {
        anyhow::bail!(
            "NATS: give one of --nats-creds, --nats-nkey-seed-file, --nats-user/--nats-password"
        );
    }
    if let Some(path) = a.creds {
        c.connection.auth = Auth::CredsFile(path);
    } else if let Some(path) = a.nkey_seed_file {
        let seed = std::fs::read_to_string(&path)
            .with_context(|| format!("reading the NKey seed {}", path.display()))?;
        c.connection.auth = Auth::NKeySeed(Secret::new(seed.trim()));
    } else if let Some((user, password)) = a.user {
        c.connection.auth = Auth::UserPassword {
            user,
            password: Secret::new(password),
        };
    }
    if a.ca.is_some() || a.cert.is_some() {
        c.connection.tls.required = true;
        c.connection.tls.ca = a.ca;
        if let Some((cert, key)) = a.cert {
            c.connection.tls.client_cert = Some(cert);
            c.connection.tls.client_key = Some(key);
        }
    }
    c.validate()
        .map_err(|e| anyhow::anyhow!("NATS settings: {e}"))?;
    Ok(c)
}

/// Whether the store setting names a PostgreSQL log.
pub(crate) fn is_postgres(store: &str) -> bool {
    store.starts_with("postgres://") || store.starts_with("postgresql://")
}

/// Compile every pathway of a directory; any error stops the start-up with its
/// diagnostics (a service never runs a pathway that does not compile).
pub(crate) fn load_registry(dir: &Path) -> anyhow::Result<PathwayRegistry> {
    let mut registry = PathwayRegistry::new();
    let loaded = parcours_lang::load_all(dir)
        .with_context(|| format!("reading pathways from {}", dir.display()))?;
    for l in loaded {
        match l.pathway {
            Some(p) => {
                if let Some(same) = registry.get(&p.id, p.version)
                    && same.source != p.source
                {
                    anyhow::bail!(
                        "{} and {} both define {} v{}: give the new one a new version",
                        same.source,
                        p.source,
                        p.id,
                        p.version
                    );
                }
                registry.add(p)
            }
            None => anyhow::bail!(
                "{} does not compile:\n{}",
                l.path.display(),
                l.report.short()
            ),
        }
    }
    if registry.is_empty() {
        anyhow::bail!("no pathway file in {}", dir.display());
    }
    Ok(registry)
}

/// Publish the versions read from files into the log (a published version never
/// changes: a different text under the same version stops the start), and bring back
/// every version published earlier whose file is gone, compiled from the log, so the
/// instances pinned to it keep running. A version published here is audited as done by
/// the command `actor` (`serve`, `migrate`, `replay`).
pub(crate) async fn reconcile<S: EventStore + AuditLog>(
    store: &S,
    registry: &mut PathwayRegistry,
    actor: &str,
) -> anyhow::Result<()> {
    use parcours_runtime::publish;
    let from_files: Vec<(String, u32, String)> = registry
        .all()
        .map(|p| (p.id.clone(), p.version, p.source.clone()))
        .collect();
    for (id, version, file) in &from_files {
        publish_file(store, id, *version, file, actor).await?;
    }
    for p in publish::published(store).await? {
        if registry.get(&p.id, p.version).is_some() {
            continue;
        }
        match compile_published(&p) {
            Ok(compiled) => {
                tracing::info!(pathway = %p.id, version = p.version, "pathway version restored from the log");
                registry.add(compiled);
            }
            Err(report) => anyhow::bail!(
                "{} v{} was published but no longer compiles with this parcours:\n{report}",
                p.id,
                p.version,
            ),
        }
    }
    Ok(())
}

/// Publish the version `id` v`version` from `file` into the log, audited as done by the
/// command `actor` when it is new. A different text under a published version is an
/// error (raise the version).
pub(crate) async fn publish_file<S: EventStore + AuditLog>(
    store: &S,
    id: &str,
    version: u32,
    file: &str,
    actor: &str,
) -> anyhow::Result<parcours_runtime::publish::Publication> {
    use parcours_runtime::publish::{self, Publication};
    let text = std::fs::read_to_string(file).with_context(|| format!("reading {file}"))?;
    #[allow(clippy::disallowed_methods)]
    let now = jiff::Timestamp::now();
    let done = publish::publish(store, id, version, file, &text, now).await?;
    if done == Publication::New {
        tracing::info!(pathway = %id, version, file = %file, "pathway version published");
        crate::security::audit_change(
            store,
            &crate::security::cli_actor(actor),
            "pathway.publish",
            vec![(Some(format!("{id} v{version}")), None, file.to_string())],
        )
        .await?;
    }
    Ok(done)
}

/// Compile a version from its text as published in the log: at start for versions
/// whose file is gone, and while serving for versions another process published
/// (`EngineConfig::compile_published`).
pub(crate) fn compile_published(
    p: &parcours_runtime::publish::Published,
) -> Result<parcours_core::model::CompiledPathway, String> {
    let name = format!("{} (v{} as published, from the log)", p.file, p.version);
    parcours_lang::compile_source(&name, &p.text)
        .map(|(compiled, _)| compiled)
        .map_err(|report| report.short())
}

/// Connect to a PostgreSQL log for a command (it does not wait: the server should be up).
pub(crate) async fn connect_postgres(
    url: &str,
) -> anyhow::Result<parcours_store_postgres::PgStore> {
    parcours_store_postgres::PgStore::connect(url)
        .await
        .context("opening the PostgreSQL log")
}

/// Open the store named by a URL or a path (`sqlite://file.db`, `file.db`).
pub(crate) async fn open_sqlite(store: &str) -> anyhow::Result<SqliteStore> {
    let s = if store.starts_with("sqlite:") {
        SqliteStore::open_url(store).await
    } else if store.contains("://") {
        anyhow::bail!(
            "unsupported store `{store}`: give a SQLite file (`parcours.db`, `sqlite://parcours.db`)"
        );
    } else {
        SqliteStore::open(Path::new(store)).await
    };
    s.with_context(|| format!("opening the log {store}"))
}

/// Open a SQLite log that must exist already: the commands that read or change a log
/// (`replay`, `migrate`, `publish`, `report`, `erase`, `rewrap-keys`) never create one —
/// run from the wrong directory, or without `--store`/`PARCOURS_STORE`, they would
/// otherwise work on a new empty log and report that all is well.
pub(crate) async fn open_existing_sqlite(store: &str) -> anyhow::Result<SqliteStore> {
    let file = store
        .trim_start_matches("sqlite://")
        .trim_start_matches("sqlite:");
    let file = file.split('?').next().unwrap_or(file);
    let is_file = store.starts_with("sqlite:") || !store.contains("://");
    anyhow::ensure!(
        !is_file || Path::new(file).exists(),
        "{store}: no such log (give the log with --store or PARCOURS_STORE: a SQLite file `parcours serve` made, or a postgres:// URL)"
    );
    open_sqlite(store).await
}

/// Run until SIGTERM or Ctrl-C, then stop within the grace period.
///
/// The HTTP port answers from the first: while the engine waits for its services and
/// opens the log, a [`parcours_http::Startup`] gate answers the probes (`/healthz` 200,
/// `/readyz` 503, each naming what it waits for; `/metrics` with `parcours_ready` 0) and
/// refuses the rest with 503.
pub(crate) async fn run(settings: Settings) -> anyhow::Result<()> {
    served_tenants(&settings)?;
    let registry = load_registry(&settings.pathways)?;
    for p in registry.all() {
        tracing::info!(pathway = %p.id, version = p.version, "pathway loaded");
    }
    let mut start = Starting::begin(&settings).await?;
    if is_postgres(&settings.store) {
        // Waits while the server does not answer (PostgreSQL started with the engine).
        start.phase("waiting for PostgreSQL");
        // What the start-up gate's `/metrics` shows meanwhile (the API's own scrapes
        // set it from the engine's health once it serves).
        parcours_runtime::metrics::metrics().store_up.set(0);
        let Some(store) = start
            .or_stopped(parcours_store_postgres::PgStore::connect_waiting(
                &settings.store,
                parcours_store_postgres::PgStoreOptions::default(),
            ))
            .await
        else {
            return start.stopped().await;
        };
        let store = store.context("opening the PostgreSQL log")?;
        parcours_runtime::metrics::metrics().store_up.set(1);
        let url = settings.store.clone();
        publish_and_serve(start, store, registry, settings, Some(url)).await
    } else {
        start.phase("opening the log");
        let store = open_sqlite(&settings.store).await?;
        publish_and_serve(start, store, registry, settings, None).await
    }
}

/// The tenants `--tenants` lists (`None`: every tenant), each a valid tenant id, the
/// MLLP listener's among them.
fn served_tenants(settings: &Settings) -> anyhow::Result<Option<BTreeSet<String>>> {
    let listed: BTreeSet<String> = settings
        .tenants
        .iter()
        .map(|t| t.trim().to_string())
        .filter(|t| !t.is_empty())
        .collect();
    if listed.is_empty() {
        return Ok(None);
    }
    if let Some(bad) = listed
        .iter()
        .find(|t| !parcours_core::events::valid_tenant(t))
    {
        anyhow::bail!(
            "--tenants: `{bad}` is not a tenant id ({})",
            parcours_core::events::TENANT_RULE
        );
    }
    if let Some((_, mllp)) = &settings.mllp
        && !listed.contains(mllp)
    {
        anyhow::bail!(
            "--mllp-tenant `{mllp}` is not among --tenants ({}): its messages would all be refused",
            listed.iter().cloned().collect::<Vec<_>>().join(", ")
        );
    }
    Ok(Some(listed))
}

/// Publish the pathway files into the log (`reconcile`), then serve.
async fn publish_and_serve<
    S: EventStore + AuditLog + PatientKeys + Clone + std::fmt::Debug + 'static,
>(
    mut start: Starting,
    store: S,
    mut registry: PathwayRegistry,
    settings: Settings,
    postgres: Option<String>,
) -> anyhow::Result<()> {
    // The vault's keys before anything is written: a log whose patients' data keys they
    // do not unwrap is refused as it is.
    let (provider, vault_key) = settings
        .vault_keys
        .provider(&settings.store, &settings.identity_key, true)
        .context("the vault key (patient data keys)")?;
    crate::vault_keys::check_holds_every_key(&store, &provider, &vault_key).await?;
    start.phase("publishing the pathways");
    let Some(r) = start
        .or_stopped(reconcile(&store, &mut registry, "serve"))
        .await
    else {
        return start.stopped().await;
    };
    r?;
    serve_with(start, store, registry, settings, postgres, provider).await
}

/// What `serve` holds from its first step: the signals, and the HTTP port answering
/// through its start-up gate.
struct Starting {
    signals: ShutdownSignals,
    gate: parcours_http::Startup,
    /// Stops intake: the HTTP server (and, once started, MLLP and the partition loops).
    intake: CancellationToken,
    server: tokio::task::JoinHandle<std::io::Result<()>>,
    local: SocketAddr,
    scheme: &'static str,
}

impl Starting {
    /// Listen to the signals, bind the HTTP port (TLS if asked) and serve the gate.
    async fn begin(settings: &Settings) -> anyhow::Result<Starting> {
        // Listened to before anything else: a SIGTERM sent as soon as the process
        // answers (an orchestrator's rolling update) must stop it gracefully, and until
        // a handler is installed its default action kills the process.
        let signals = ShutdownSignals::listen().context("listening to SIGTERM and Ctrl-C")?;
        crate::security::check_access(&settings.security, is_postgres(&settings.store))?;
        if let Some((addr, _)) = &settings.mllp {
            crate::security::check_mllp(*addr, &settings.security)?;
        }
        let http_tls = match (
            &settings.security.http_tls_cert,
            &settings.security.http_tls_key,
        ) {
            (Some(cert), Some(key)) => Some(
                parcours_hl7v2::tls::acceptor_from_files(cert, key, None).context("HTTP TLS")?,
            ),
            _ => None,
        };
        let listener = tokio::net::TcpListener::bind(settings.http)
            .await
            .with_context(|| format!("listening on {}", settings.http))?;
        let local = listener.local_addr()?;
        let scheme = if http_tls.is_some() { "https" } else { "http" };
        let gate = parcours_http::Startup::new("starting", http_tls.is_some());
        let app = gate.router();
        let intake = CancellationToken::new();
        let http_token = intake.clone();
        let server = match http_tls {
            None => tokio::spawn(async move {
                axum::serve(listener, app)
                    .with_graceful_shutdown(async move { http_token.cancelled().await })
                    .await
            }),
            Some(acceptor) => {
                let tls =
                    crate::security::TlsListener::new(listener, acceptor, http_token.clone())?;
                tokio::spawn(async move {
                    axum::serve(tls, app)
                        .with_graceful_shutdown(async move { http_token.cancelled().await })
                        .await
                })
            }
        };
        // Scripts and tests read the port here while the engine starts.
        println!("parcours: starting; probes on {scheme}://{local}/healthz and /readyz");
        Ok(Starting {
            signals,
            gate,
            intake,
            server,
            local,
            scheme,
        })
    }

    /// What the process does now, as the probes show it.
    fn phase(&self, phase: &'static str) {
        self.gate.set_phase(phase);
    }

    /// `work`, unless SIGTERM or Ctrl-C comes first (`None`).
    async fn or_stopped<T>(&mut self, work: impl std::future::Future<Output = T>) -> Option<T> {
        tokio::select! {
            r = work => Some(r),
            () = self.signals.arrived() => None,
        }
    }

    /// Stopped before serving: nothing was taken in; close the port and exit.
    async fn stopped(self) -> anyhow::Result<()> {
        tracing::info!(phase = self.gate.phase(), "stopped while starting");
        self.intake.cancel();
        let _ = self.server.await;
        Ok(())
    }
}

async fn serve_with<S: EventStore + AuditLog + PatientKeys + Clone + std::fmt::Debug + 'static>(
    mut start: Starting,
    store: S,
    registry: PathwayRegistry,
    settings: Settings,
    postgres: Option<String>,
    provider: parcours_vault::LocalKeyFile,
) -> anyhow::Result<()> {
    let (authenticator, local_key) =
        crate::security::authenticator(&settings.security, &settings.store, postgres.is_some())?;
    // Patient data at rest (`parcours-vault`): dead letters sealed by the store,
    // identifying fields turned into tokens at intake.
    let store = parcours_vault::VaultStore::new(store, provider);
    let vault = store.vault().clone();
    let pseudonymizer = parcours_identity::Pseudonymizer::load_or_create(&settings.identity_key)
        .context("the identity key (pseudonymous subject keys)")?;
    // Rebuilds the projections first when their layout changed (an upgrade): minutes on
    // a large log, the probes meanwhile saying so.
    start.phase("opening the engine on the log");
    let Some(engine) = start
        .or_stopped(Engine::open(
            store.clone(),
            registry,
            EngineConfig {
                cache_patients: settings.cache_patients,
                tenants: served_tenants(&settings)?,
                timer_catch_up: settings.timer_catch_up,
                // Scale-out: other engine processes write the same log (their links and
                // merges race this one's events: the commits' guards).
                shared_log: postgres.is_some() && settings.nats.is_some(),
                // Versions other processes publish while this one runs (a rolling
                // update of the pathway files): instances pinned to them run here too.
                compile_published: Some(parcours_runtime::publish::Compiler::new(
                    compile_published,
                )),
                ..EngineConfig::default()
            },
        ))
        .await
    else {
        return start.stopped().await;
    };
    let mut engine = engine.context("opening the engine on the log")?;
    // What the HTTP API and `/metrics` read: the engine's versions, those it adds too.
    let registry = engine.share_registry();
    // Two stages of shutdown: `intake` stops the HTTP and MLLP listeners and the
    // partition loops (each finishes its batch); then `token` stops the engine and the
    // relay, which publishes what was committed.
    let intake = start.intake.clone();
    let token = CancellationToken::new();
    let tracker = TaskTracker::new();
    let mut cluster_task = None;
    let (handle, front) = match &settings.nats {
        None => {
            if postgres.is_some() {
                tracing::warn!(
                    "a PostgreSQL log without --nats: one engine process, effects on the in-process bus"
                );
            }
            let handle = service::start(
                engine,
                InProcessBus::new(4096),
                SystemClock,
                ServiceConfig {
                    commits_in_flight: commits_in_flight(settings.commits_in_flight),
                    ..ServiceConfig::default()
                },
                token.clone(),
                &tracker,
            );
            (handle.clone(), handle)
        }
        Some(config) => {
            // Waits while no NATS server answers (started with the engine), then while
            // JetStream cannot answer (a cluster's nodes started together elect their
            // leaders first); a SIGTERM meanwhile stops the start. The FHIR stream too:
            // hospitals may publish FHIR before the engine that reads it starts.
            start.phase("waiting for NATS");
            parcours_runtime::metrics::metrics().bus_up.set(0);
            let Some(nats) = start
                .or_stopped(parcours_nats::Nats::connect_waiting(config.clone()))
                .await
            else {
                return start.stopped().await;
            };
            let nats = nats.context("connecting to NATS")?;
            start.phase("waiting for JetStream");
            let Some(topology) = start.or_stopped(nats.ensure_topology()).await else {
                return start.stopped().await;
            };
            let topology = topology.context("NATS streams")?;
            for (name, ensured) in topology {
                tracing::info!(stream = %name, ?ensured, "JetStream stream");
            }
            let partitions = config.partitions;
            let (scope_tx, scope_rx) = tokio::sync::watch::channel(match postgres {
                Some(_) => parcours_store::TimerScope::Partitions {
                    count: partitions,
                    owned: Vec::new(),
                },
                None => parcours_store::TimerScope::All,
            });
            let (relay_tx, relay_rx) = tokio::sync::watch::channel(postgres.is_none());
            let handle = service::start(
                engine,
                parcours_nats::NatsBus::new(nats.clone()),
                SystemClock,
                ServiceConfig {
                    timer_scope: postgres.as_ref().map(|_| scope_rx),
                    relay_leader: postgres.as_ref().map(|_| relay_rx),
                    commits_in_flight: commits_in_flight(settings.commits_in_flight),
                    ..ServiceConfig::default()
                },
                token.clone(),
                &tracker,
            );
            // `/readyz` follows the NATS connection (the client reconnects by itself).
            let mut connected = nats.connected();
            let health = handle.health().clone();
            let stop = intake.clone();
            tokio::spawn(async move {
                loop {
                    let up = *connected.borrow_and_update();
                    health
                        .bus_disconnected
                        .store(!up, std::sync::atomic::Ordering::Relaxed);
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        changed = connected.changed() => if changed.is_err() { return },
                    }
                }
            });
            // Consumer lag for /metrics: every partition's backlog, every 5 s (each
            // process reports all of them; dashboards take the max).
            let lag_nats = nats.clone();
            let stop = intake.clone();
            tokio::spawn(async move {
                let m = parcours_runtime::metrics::metrics();
                loop {
                    for p in 0..partitions {
                        if let Ok(Some((pending, ack_pending))) = lag_nats.consumer_lag(p).await {
                            let name = format!("in-p{p:02}");
                            let clamp = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
                            m.nats_consumer_pending
                                .with_label_values(&[name.as_str()])
                                .set(clamp(pending));
                            m.nats_consumer_ack_pending
                                .with_label_values(&[name.as_str()])
                                .set(clamp(ack_pending));
                        }
                    }
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = tokio::time::sleep(Duration::from_secs(5)) => {}
                    }
                }
            });
            // Refused messages' bodies are kept in the log's (sealed, erasable) dead
            // letters, not in the DLQ stream: an integration may publish anything. Events
            // under a linked local key go to their national key's partition.
            let consumer = parcours_nats::InboundConsumer::new(
                nats.clone(),
                parcours_vault::protecting(vault.clone(), handle.clone()),
            )
            .keeping_dead_letters(Arc::new(store.clone()))
            .following_links(Arc::new(parcours_nats::CoalescedLinks::new(store.clone())));
            let front = handle.forwarding(Arc::new(crate::cluster::NatsForward {
                nats: nats.clone(),
                store: store.clone(),
                wait: settings.forward_wait,
            }));
            // FHIR over NATS: mapped like the HTTP routes (same key and base URL), the
            // events forwarded to their partitions' owners; one engine at a time (the
            // owner of partition 0) reads the FHIR stream, so messages keep their order.
            let fhir = parcours_nats::FhirConsumer::new(
                nats.clone(),
                parcours_runtime::linking(
                    store.clone(),
                    parcours_vault::protecting(vault.clone(), front.clone()),
                ),
                parcours_nats::FhirSettings {
                    pseudonymizer: pseudonymizer.clone(),
                    base_url: format!("http://{}", settings.http),
                    allow_test_ins: settings.allow_test_ins,
                    // Refused bodies name patients: kept in the log's (sealed) dead
                    // letters, not in the DLQ stream.
                    dead_letters: Some(Arc::new(store.clone())),
                },
            );
            match &postgres {
                Some(url) => {
                    let cluster = crate::cluster::Cluster {
                        url: url.clone(),
                        partitions,
                        consumer,
                        fhir,
                        nats: nats.clone(),
                        scope: scope_tx,
                        relay: relay_tx,
                        health: handle.health().clone(),
                    };
                    cluster_task = Some(tokio::spawn(cluster.run(intake.clone())));
                }
                None => {
                    // One process on a SQLite log: it owns every partition.
                    drop((scope_tx, relay_tx));
                    consumer.spawn((0..partitions).map(|p| (p, intake.child_token())), &tracker);
                    let t = intake.child_token();
                    tracker.spawn(async move {
                        if let Err(e) = fhir.run(t).await {
                            tracing::error!(error = %e, "FHIR consumer stopped");
                        }
                    });
                }
            }
            tracing::info!(
                nats = %config.connection.urls.len(),
                partitions,
                server = %nats.server_version(),
                "production mode: intake and effects over NATS JetStream"
            );
            (handle, front)
        }
    };
    let (local, scheme) = (start.local, start.scheme);
    // Patients keyed by a linked local identifier are taken by their national identity's
    // key first (`parcours_runtime::links`), then their identifying fields tokenized
    // with that patient's data key.
    let front = parcours_runtime::linking(
        store.clone(),
        parcours_vault::protecting(vault.clone(), front),
    );
    let security = parcours_http::Security::new(authenticator)
        .with_rate(settings.security.http_rate, settings.security.http_burst)
        .with_tls(scheme == "https");
    let app = parcours_http::router(parcours_http::AppState {
        handle: front.clone(),
        store: store.clone(),
        registry: registry.clone(),
        limits: parcours_http::Limits {
            max_body: settings.max_body,
            ..parcours_http::Limits::default()
        },
        fhir: Some(parcours_http::FhirConfig {
            pseudonymizer: pseudonymizer.clone(),
            base_url: format!("{scheme}://{local}"),
            allow_test_ins: settings.allow_test_ins,
        }),
        security: security.clone(),
        erasure: Some(Arc::new(vault.clone())),
    });
    crate::security::spawn_auth_upkeep(
        settings.security.auth.clone(),
        security.authenticator,
        token.clone(),
    );
    crate::security::spawn_audit_purge(
        store.clone(),
        settings.security.audit_retention_days,
        token.clone(),
    );
    if let Some((addr, tenant)) = &settings.mllp {
        let mut config = settings
            .mllp_options
            .intake_config(tenant, pseudonymizer.clone());
        config.allow_test_ins = settings.allow_test_ins;
        let local_codes = config.local_codes.len();
        let server = parcours_hl7v2::mllp::MllpServer::new(
            parcours_hl7v2::Intake::new(config),
            Arc::new(crate::wiring::EngineSink(front.clone())),
            Arc::new(crate::wiring::StoreDeadLetters {
                store: store.clone(),
                tenant: tenant.clone(),
            }),
            settings
                .mllp_options
                .server_config(settings.security.mllp_allow.clone())?,
        );
        let mllp = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("MLLP: listening on {addr}"))?;
        let mllp_local = mllp.local_addr()?;
        let acceptor = match &settings.mllp_tls {
            Some((cert, key, ca)) => Some(
                parcours_hl7v2::tls::acceptor_from_files(cert, key, ca.as_deref())
                    .context("MLLP TLS")?,
            ),
            None => None,
        };
        let shutdown = intake.clone();
        tracker.spawn(async move {
            let r = match acceptor {
                Some(a) => server.serve_tls(mllp, a, shutdown).await,
                None => server.serve(mllp, shutdown).await,
            };
            if let Err(e) = r {
                tracing::error!(error = %e, "the MLLP listener stopped");
            }
        });
        tracing::info!(mllp = %mllp_local, tenant = %tenant, local_codes, "HL7 v2 over MLLP");
        println!("parcours: MLLP on {mllp_local}");
    }
    start.gate.open(app);
    let tenants = if settings.tenants.is_empty() {
        "every tenant (--tenants lists those served)".to_string()
    } else {
        settings.tenants.join(",")
    };
    // The store's URL without its password (`PARCOURS_STORE` carries it in production).
    let store = parcours_store_postgres::redacted_url(&settings.store);
    tracing::info!(http = %local, store = %store, tenants, "parcours is serving");
    // The line tests and scripts wait for.
    println!("parcours: serving on {scheme}://{local}");
    if let Some(path) = &local_key {
        // The key itself stays in its file (mode 0600), out of terminals and logs.
        println!(
            "parcours: API key in {p} (every tenant of this log); call the API with\n  curl -H \"Authorization: Bearer $(cat {p})\" '{scheme}://{local}/v1/instances?tenant=cpts-demo'",
            p = path.display()
        );
    }
    let Starting {
        signals, server, ..
    } = start;
    signals.wait().await;
    tracing::info!("stopping: no new requests; finishing what is in flight");
    handle
        .health()
        .stopping
        .store(true, std::sync::atomic::Ordering::Relaxed);
    intake.cancel();
    tracker.close();
    let drained = tokio::time::timeout(settings.shutdown_grace, async {
        // Intake first (requests in flight still get their answer, partition loops
        // finish their batch and ack it), then the engine and the relay.
        let _ = server.await;
        if let Some(c) = cluster_task {
            let _ = c.await;
        }
        token.cancel();
        tracker.wait().await;
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            grace_secs = settings.shutdown_grace.as_secs(),
            "shutdown grace period over; exiting with work still in flight (it is in the log or was never acknowledged)"
        );
    }
    tracing::info!("stopped");
    Ok(())
}

/// SIGTERM and Ctrl-C (SIGINT), caught from the moment they are listened to.
struct ShutdownSignals {
    #[cfg(unix)]
    term: tokio::signal::unix::Signal,
    #[cfg(unix)]
    interrupt: tokio::signal::unix::Signal,
}

impl ShutdownSignals {
    fn listen() -> std::io::Result<ShutdownSignals> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            Ok(ShutdownSignals {
                term: signal(SignalKind::terminate())?,
                interrupt: signal(SignalKind::interrupt())?,
            })
        }
        #[cfg(not(unix))]
        Ok(ShutdownSignals {})
    }

    /// Until one of them arrives (at once if one came already).
    async fn wait(mut self) {
        self.arrived().await;
    }

    /// Until one of them arrives, keeping them listened to.
    async fn arrived(&mut self) {
        #[cfg(unix)]
        tokio::select! {
            _ = self.term.recv() => {}
            _ = self.interrupt.recv() => {}
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

/// Group commits in flight at once: as asked, else the service's default (4), capped by
/// the log: 4 on PostgreSQL, which takes concurrent writers (groups of disjoint
/// patients), 2 on SQLite (one written while the next waits for its single writer).
fn commits_in_flight(asked: usize) -> usize {
    match asked {
        0 => ServiceConfig::default().commits_in_flight,
        n => n,
    }
}
