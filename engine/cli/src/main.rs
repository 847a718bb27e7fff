//! `parcours`: the command-line tool.
//!
//! Thin by design: argument parsing and printing; the work is in the library crates.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{CommandFactory as _, FromArgMatches as _, Parser, Subcommand, ValueEnum};

/// jemalloc instead of glibc's malloc: the engine allocates per event and per statement
/// on several threads (futures, buffers, decoded rows); glibc's slow path (`_int_malloc`)
/// was ~14 % of the engine's CPU, and the engine uses a quarter less CPU with jemalloc
/// (benches/README.md, "The allocator").
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

mod backup;
mod cluster;
mod config;
mod demo;
mod erase;
mod local_codes;
mod report;
mod security;
mod serve;
mod telemetry;
mod vault_keys;
mod wiring;

#[derive(Parser, Debug)]
#[command(
    name = "parcours",
    version,
    about = "Care-pathway orchestration engine"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

// Parsed once at start-up: the size of the largest variant does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand, Debug)]
enum Command {
    /// Check pathway files (a file or a directory): every problem with its code and file:line:col.
    Check {
        /// Files or directories.
        #[arg(required = true)]
        paths: Vec<PathBuf>,
        /// One line per problem instead of source snippets.
        #[arg(long)]
        short: bool,
        /// Treat warnings as errors.
        #[arg(long)]
        deny_warnings: bool,
    },
    /// Draw a pathway's state graph.
    Graph {
        /// The pathway file.
        file: PathBuf,
        /// Output format.
        #[arg(long, value_enum, default_value_t = Format::Mermaid)]
        format: Format,
    },
    /// Run the scenario tests of the pathways in a directory (`<dir>/scenarios/**`).
    Test {
        /// The pathways directory.
        #[arg(default_value = "pathways")]
        dir: PathBuf,
        /// Only scenarios whose file path contains this text.
        #[arg(long)]
        filter: Option<String>,
    },
    /// Run the engine on a synthetic cohort with an accelerated virtual clock and report
    /// what it did (tasks, alerts, escalations, on-time rates per pathway).
    Demo {
        /// Heart-failure discharges.
        #[arg(long, default_value_t = 150)]
        heart_failure: usize,
        /// Type 2 diabetes diagnoses.
        #[arg(long, default_value_t = 150)]
        diabetes: usize,
        /// Simulated days.
        #[arg(long, default_value_t = 200)]
        days: i64,
        /// Seed of the synthetic cohort (same seed, same run).
        #[arg(long, default_value_t = 42)]
        seed: u64,
        /// The SQLite log (default: a new file in the temporary directory).
        #[arg(long)]
        store: Option<PathBuf>,
        /// The pathways directory.
        #[arg(long, default_value = "pathways")]
        pathways: PathBuf,
        /// No progress bar.
        #[arg(long)]
        quiet: bool,
        #[command(flatten)]
        telemetry: telemetry::TelemetryArgs,
    },
    /// Run the engine: the HTTP API over the event log, durable timers, effects to the bus.
    Serve {
        /// Address of the HTTP API.
        #[arg(long, default_value = "127.0.0.1:8080", env = "PARCOURS_HTTP")]
        http: std::net::SocketAddr,
        /// A YAML file of these settings (keys are the flags' names); flags and
        /// environment variables override it. See deploy/parcours.yaml.
        #[arg(long, env = "PARCOURS_CONFIG")]
        config: Option<PathBuf>,
        /// The event log: a SQLite file (`parcours.db`, `sqlite://parcours.db`) or a
        /// PostgreSQL URL (`postgres://user@host/db?sslmode=verify-full`).
        #[arg(long, default_value = "parcours.db", env = "PARCOURS_STORE")]
        store: String,
        /// The pathways directory.
        #[arg(long, default_value = "pathways", env = "PARCOURS_PATHWAYS")]
        pathways: PathBuf,
        /// Seconds to finish in-flight work after SIGTERM before exiting.
        #[arg(long, default_value_t = 20, env = "PARCOURS_SHUTDOWN_GRACE")]
        shutdown_grace: u64,
        /// Patients kept in memory (the others are read from the log when needed).
        #[arg(long, default_value_t = 100_000, env = "PARCOURS_CACHE_PATIENTS")]
        cache_patients: usize,
        /// The tenants (CPTS ids) this deployment serves, separated by commas; an event
        /// of another tenant is refused with the reason and kept as a dead letter (a
        /// tenant typed wrong at a sender would start pathways nobody watches).
        /// Default: every tenant.
        #[arg(long, value_delimiter = ',', env = "PARCOURS_TENANTS")]
        tenants: Vec<String>,
        /// Catch-up grace: a timer already due when the commit that scheduled it was
        /// recorded (a backlog's discharge dated days ago) fires no sooner than this after
        /// that commit, so that the rest of the backlog arrives first. A duration (`10m`,
        /// `90s`, `1h`, or seconds); 0 disables it. `parcours replay` needs the same.
        #[arg(long, default_value = "10m", value_parser = parse_duration, env = "PARCOURS_TIMER_CATCH_UP")]
        timer_catch_up: jiff::SignedDuration,
        /// Group commits in flight at once, at most (0: 4 on a PostgreSQL log; 2 on SQLite,
        /// one written while the next waits for the one writer). Beyond two on
        /// PostgreSQL, beyond one on SQLite, only for a backlog (submissions queued, or
        /// large groups in flight).
        #[arg(long, default_value_t = 0, env = "PARCOURS_COMMITS_IN_FLIGHT")]
        commits_in_flight: usize,
        /// Largest request body, in bytes.
        #[arg(long, default_value_t = 4 << 20, env = "PARCOURS_MAX_BODY")]
        max_body: usize,
        /// NATS servers (comma-separated): production mode. Events come in through the
        /// JetStream inbound stream, effects go out on JetStream; with a PostgreSQL log,
        /// several processes share the partitions.
        #[arg(long, env = "PARCOURS_NATS", value_delimiter = ',')]
        nats: Vec<String>,
        /// Partitions of patients (1 to 100); the same on every process and publisher.
        #[arg(long, default_value_t = 16, env = "PARCOURS_PARTITIONS")]
        partitions: u16,
        /// NATS credentials file (`.creds`: user JWT and NKey seed).
        #[arg(long, env = "PARCOURS_NATS_CREDS")]
        nats_creds: Option<PathBuf>,
        /// NATS NKey seed file (`SU…`).
        #[arg(long, env = "PARCOURS_NATS_NKEY_SEED_FILE")]
        nats_nkey_seed_file: Option<PathBuf>,
        /// NATS user (with PARCOURS_NATS_PASSWORD).
        #[arg(long, env = "PARCOURS_NATS_USER", requires = "nats_password")]
        nats_user: Option<String>,
        /// NATS password (prefer the environment variable to the flag).
        #[arg(long, env = "PARCOURS_NATS_PASSWORD", hide_env_values = true)]
        nats_password: Option<String>,
        /// TLS to NATS: the CA of the servers' certificates (PEM); TLS is then required.
        #[arg(long, env = "PARCOURS_NATS_CA")]
        nats_ca: Option<PathBuf>,
        /// TLS to NATS: client certificate (PEM), for servers that verify clients.
        #[arg(long, env = "PARCOURS_NATS_CERT", requires = "nats_key")]
        nats_cert: Option<PathBuf>,
        /// TLS to NATS: client private key (PEM).
        #[arg(long, env = "PARCOURS_NATS_KEY", requires = "nats_cert")]
        nats_key: Option<PathBuf>,
        /// JetStream replicas of parcours' streams (3 on a three-node cluster).
        #[arg(long, default_value_t = 1, env = "PARCOURS_NATS_REPLICAS")]
        nats_replicas: usize,
        /// Batches of one partition with the engine at once (a patient's events are
        /// never in two of them): an event need not wait for another patient's commit.
        #[arg(long, default_value_t = 4, env = "PARCOURS_NATS_BATCHES_IN_FLIGHT")]
        nats_batches_in_flight: usize,
        /// Seconds an HTTP or MLLP caller waits for the owner's commit of a forwarded
        /// event before hearing "queued" (202; MLLP: AE, send again).
        #[arg(long, default_value_t = 10, env = "PARCOURS_FORWARD_WAIT")]
        forward_wait: u64,
        #[command(flatten)]
        security: security::SecurityArgs,
        #[command(flatten)]
        telemetry: telemetry::TelemetryArgs,
        /// The key file of pseudonymous subject keys (32 random bytes, created if missing;
        /// keep it outside the log's backups). Default: next to the SQLite log.
        #[arg(long, env = "PARCOURS_IDENTITY_KEY")]
        identity_key: Option<PathBuf>,
        #[command(flatten)]
        vault_keys: vault_keys::VaultKeyArgs,
        /// Listen for HL7 v2 over MLLP on this address (e.g. 0.0.0.0:2575).
        #[arg(long, env = "PARCOURS_MLLP", requires = "mllp_tenant")]
        mllp: Option<std::net::SocketAddr>,
        /// The tenant (CPTS) the MLLP listener's messages belong to.
        #[arg(long, env = "PARCOURS_MLLP_TENANT")]
        mllp_tenant: Option<String>,
        /// MLLP over TLS: certificate chain (PEM).
        #[arg(long, env = "PARCOURS_MLLP_TLS_CERT", requires = "mllp_tls_key")]
        mllp_tls_cert: Option<PathBuf>,
        /// MLLP over TLS: private key (PEM).
        #[arg(long, env = "PARCOURS_MLLP_TLS_KEY", requires = "mllp_tls_cert")]
        mllp_tls_key: Option<PathBuf>,
        /// MLLP over mutual TLS: the CA that signs accepted client certificates (PEM).
        #[arg(long, env = "PARCOURS_MLLP_CLIENT_CA", requires = "mllp_tls_cert")]
        mllp_client_ca: Option<PathBuf>,
        /// Accept test INS identities (OIDs …4.10 and …4.11): test platforms only.
        #[arg(long, env = "PARCOURS_ALLOW_TEST_INS")]
        allow_test_ins: bool,
        #[command(flatten)]
        mllp_options: serve::MllpArgs,
    },
    /// Write the pathway indicators of a log as a self-contained HTML report (charts, and
    /// each pathway's graph with the active instances per state). Reads only.
    Report {
        /// The event log: a SQLite file or a PostgreSQL URL.
        #[arg(long, default_value = "parcours.db", env = "PARCOURS_STORE")]
        store: String,
        /// The pathways directory (versions published in the log are read from it too).
        #[arg(long, default_value = "pathways")]
        pathways: PathBuf,
        /// The HTML file to write.
        #[arg(long, short, default_value = "parcours-report.html")]
        out: PathBuf,
        /// Only this tenant (CPTS).
        #[arg(long)]
        tenant: Option<String>,
        #[command(flatten)]
        telemetry: telemetry::TelemetryArgs,
    },
    /// Rebuild every instance and projection from the log's records and check them against
    /// the stored ones; `--repair` replaces the stored projections by the rebuilt ones.
    Replay {
        /// The event log: a SQLite file, or a `postgres://` URL.
        #[arg(long, default_value = "parcours.db", env = "PARCOURS_STORE")]
        store: String,
        /// The pathways directory (every version the log's instances are pinned to).
        #[arg(long, default_value = "pathways")]
        pathways: PathBuf,
        /// Write the rebuilt projections and snapshots (stop `parcours serve` first).
        #[arg(long)]
        repair: bool,
        /// The catch-up grace the engines writing the log ran with (`serve
        /// --timer-catch-up`): timer rows are rebuilt with it.
        #[arg(long, default_value = "10m", value_parser = parse_duration, env = "PARCOURS_TIMER_CATCH_UP")]
        timer_catch_up: jiff::SignedDuration,
        #[command(flatten)]
        telemetry: telemetry::TelemetryArgs,
    },
    /// Move running instances to a new version of their pathway by a declared state
    /// mapping (a migration file). Without --apply, only shows what would happen.
    Migrate {
        /// The migration file (YAML: migration, tenant, pathway, from, to, states, instances).
        file: PathBuf,
        /// The event log: a SQLite file, or a `postgres://` URL.
        #[arg(long, default_value = "parcours.db", env = "PARCOURS_STORE")]
        store: String,
        /// The pathways directory (both versions must be there or published in the log).
        #[arg(long, default_value = "pathways")]
        pathways: PathBuf,
        /// Record the migration and move the instances that can move.
        #[arg(long)]
        apply: bool,
        #[command(flatten)]
        telemetry: telemetry::TelemetryArgs,
    },
    /// Publish pathway versions into a log without restarting anything: each file (or
    /// every pathway file of a directory) is checked first, and nothing is published if
    /// one has an error. Engines serving the log load a new version within 10 s and
    /// enrol new patients in the highest; running patients stay on theirs (`migrate`
    /// moves them). A published version never changes: another text under it is refused.
    Publish {
        /// Files or directories.
        #[arg(required = true)]
        paths: Vec<PathBuf>,
        /// The event log: a SQLite file, or a `postgres://` URL.
        #[arg(long, default_value = "parcours.db", env = "PARCOURS_STORE")]
        store: String,
        #[command(flatten)]
        telemetry: telemetry::TelemetryArgs,
    },
    /// Print the JSON Schema of pathway files.
    Schema,
    /// List the canonical event catalogue and the fields guards can read.
    Events,
    /// Print the HTTP API's OpenAPI 3.1 document (JSON), as `serve` answers it at
    /// `GET /v1/openapi.json`: to generate a client without a running server.
    Openapi,
    /// Print the NATS interface's AsyncAPI 3.0 document (JSON), as `serve` answers it at
    /// `GET /v1/asyncapi.json`.
    Asyncapi,
    /// Erase a patient (right to erasure): destroy their data keys, so their identifying
    /// content is unreadable everywhere; record it in the log and the audit trail.
    Erase(erase::EraseArgs),
    /// Copy a SQLite log into a new file while `serve` keeps writing to it: every commit
    /// whole, the copy checked and synced, no file ever overwritten. The key files next
    /// to the log are not copied (back them up apart from it).
    Backup(backup::BackupArgs),
    /// Wrap every patient data key again by the vault key, the last step of a rotation
    /// of the vault's master key: what the previous keys wrapped unwraps with them, is
    /// wrapped by the new key, and the old wrappings are scrubbed from the database
    /// files. Nothing else changes (tokens, sealed dead letters); engines keep running.
    RewrapKeys(vault_keys::RewrapArgs),
    /// Make an API key for `serve --auth`: prints the key (hand it to the caller; it is
    /// kept nowhere) and the entry for the auth file (its SHA-256 only).
    ApiKey(security::ApiKeyArgs),
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Format {
    Dot,
    Mermaid,
}

fn main() -> ExitCode {
    // One TLS provider for the whole process (ring, as every TLS client and server here):
    // an HTTP client built without its own TLS configuration (the OTLP exporter's) takes
    // it from here. An error means one is installed already.
    let _ = tokio_rustls::rustls::crypto::ring::default_provider().install_default();
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let mut command = Cli::command();
    if let Some(path) = config::config_path(&args) {
        command = match config::apply(command, &path) {
            Ok(c) => c,
            Err(e) => {
                eprintln!("error: {e:#}");
                return ExitCode::from(2);
            }
        };
    }
    let cli = match Cli::from_arg_matches(&command.get_matches_from(args)) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    if !matches!(cli.command, Command::Serve { .. }) {
        quiet_when_the_reader_leaves();
    }
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Check {
            paths,
            short,
            deny_warnings,
        } => check(&paths, short, deny_warnings),
        Command::Graph { file, format } => {
            let loaded = parcours_lang::load_file(&file)?;
            let Some(p) = loaded.pathway else {
                eprint!("{}", loaded.report.render());
                return Ok(ExitCode::FAILURE);
            };
            match format {
                Format::Dot => print!("{}", parcours_lang::render::dot(&p)),
                Format::Mermaid => print!("{}", parcours_lang::render::mermaid(&p)),
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Test { dir, filter } => test(&dir, filter.as_deref()),
        Command::Demo {
            heart_failure,
            diabetes,
            days,
            seed,
            store,
            pathways,
            quiet,
            telemetry,
        } => {
            let _telemetry = telemetry::init(&telemetry, "warn")?;
            let db = match store {
                Some(p) => p,
                None => {
                    let p = std::env::temp_dir()
                        .join(format!("parcours-demo-{}.db", std::process::id()));
                    let _ = std::fs::remove_file(&p);
                    p
                }
            };
            let settings = demo::Settings {
                heart_failure,
                diabetes,
                days,
                seed,
                quiet,
            };
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            rt.block_on(demo::run(&pathways, &db, &settings))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Serve {
            config: _,
            http,
            store,
            pathways,
            shutdown_grace,
            cache_patients,
            tenants,
            timer_catch_up,
            commits_in_flight,
            max_body,
            telemetry,
            identity_key,
            vault_keys,
            mllp,
            mllp_tenant,
            mllp_tls_cert,
            mllp_tls_key,
            mllp_client_ca,
            allow_test_ins,
            mllp_options,
            nats,
            partitions,
            nats_creds,
            nats_nkey_seed_file,
            nats_user,
            nats_password,
            nats_ca,
            nats_cert,
            nats_key,
            nats_replicas,
            nats_batches_in_flight,
            forward_wait,
            security,
        } => {
            // PostgreSQL's notices at start (`relation "_sqlx_migrations" already exists,
            // skipping`) are its chatter, not the engine's news.
            let _telemetry = telemetry::init(&telemetry, "info,sqlx::postgres::notice=warn")?;
            if forward_wait >= 25 {
                anyhow::bail!(
                    "--forward-wait {forward_wait}: give less than 25 seconds (an HTTP request may take 30)"
                );
            }
            let nats = if nats.is_empty() {
                None
            } else {
                Some(serve::nats_config(serve::NatsArgs {
                    urls: nats,
                    partitions,
                    creds: nats_creds,
                    nkey_seed_file: nats_nkey_seed_file,
                    user: nats_user.zip(nats_password),
                    ca: nats_ca,
                    cert: nats_cert.zip(nats_key),
                    replicas: nats_replicas,
                    batches_in_flight: nats_batches_in_flight,
                })?)
            };
            if serve::is_postgres(&store) && identity_key.is_none() {
                anyhow::bail!(
                    "with a PostgreSQL log, give --identity-key (PARCOURS_IDENTITY_KEY): the key file of pseudonymous subject keys, the same on every process, kept outside the database and its backups"
                );
            }
            let identity_key =
                identity_key.unwrap_or_else(|| erase::beside_log(&store, "identity.key"));
            let rt = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?;
            rt.block_on(serve::run(serve::Settings {
                http,
                store,
                pathways,
                shutdown_grace: std::time::Duration::from_secs(shutdown_grace),
                cache_patients,
                tenants,
                timer_catch_up,
                commits_in_flight,
                max_body,
                identity_key,
                vault_keys,
                mllp: mllp.zip(mllp_tenant),
                mllp_tls: mllp_tls_cert
                    .zip(mllp_tls_key)
                    .map(|(c, k)| (c, k, mllp_client_ca)),
                allow_test_ins,
                mllp_options,
                nats,
                forward_wait: std::time::Duration::from_secs(forward_wait),
                security,
            }))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Report {
            store,
            pathways,
            out,
            tenant,
            telemetry,
        } => run_command(
            &telemetry,
            report(&store, &pathways, &out, tenant.as_deref()),
        ),
        Command::Replay {
            store,
            pathways,
            repair,
            timer_catch_up,
            telemetry,
        } => run_command(
            &telemetry,
            replay(&store, &pathways, repair, timer_catch_up),
        ),
        Command::Migrate {
            file,
            store,
            pathways,
            apply,
            telemetry,
        } => run_command(&telemetry, migrate(&file, &store, &pathways, apply)),
        Command::Publish {
            paths,
            store,
            telemetry,
        } => run_command(&telemetry, publish(&paths, &store)),
        Command::Schema => {
            println!(
                "{}",
                serde_json::to_string_pretty(&parcours_lang::schema())?
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Openapi => {
            println!(
                "{}",
                serde_json::to_string_pretty(parcours_http::openapi::document())?
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Asyncapi => {
            println!(
                "{}",
                serde_json::to_string_pretty(parcours_http::asyncapi::document())?
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Erase(args) => erase::run(args),
        Command::Backup(args) => backup::run(args),
        Command::RewrapKeys(args) => vault_keys::run(args),
        Command::ApiKey(args) => {
            security::api_key(&args)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Events => {
            for ty in parcours_core::EventType::ALL {
                println!("{ty}\n    {}", ty.doc());
                println!("    occurred_at: timestamp");
                for f in ty.fields() {
                    let opt = if f.optional { " (optional)" } else { "" };
                    println!("    {}: {}{opt} — {}", f.name, f.ty, f.doc);
                }
                println!();
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// `parcours events | head`: once the reader of standard output has gone, printing the
/// rest fails, and `println!` panics. A command that prints (not `serve`, whose output is
/// its log) then ends quietly, as a program killed by SIGPIPE would (exit status 141), not
/// with a panic's message and backtrace.
fn quiet_when_the_reader_leaves() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let payload = info.payload();
        let message = payload
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| payload.downcast_ref::<&str>().copied())
            .unwrap_or("");
        if message.starts_with("failed printing to stdout") && message.contains("os error 32") {
            std::process::exit(141);
        }
        default(info);
    }));
}

fn check(paths: &[PathBuf], short: bool, deny_warnings: bool) -> anyhow::Result<ExitCode> {
    let color = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    let (mut files, mut errors, mut warnings) = (0, 0, 0);
    for path in paths {
        if !path.exists() {
            anyhow::bail!("{}: no such file or directory", path.display());
        }
        for l in parcours_lang::load_all(path)? {
            files += 1;
            let (e, w) = l.report.counts();
            errors += e;
            warnings += w;
            if !l.report.diagnostics.is_empty() {
                let text = if short {
                    l.report.short()
                } else if color {
                    l.report.render_with(miette::GraphicalTheme::unicode())
                } else {
                    l.report.render()
                };
                eprint!("{text}");
            }
            if let Some(p) = &l.pathway {
                println!("ok: {} (pathway {} v{})", l.path.display(), p.id, p.version);
            }
        }
    }
    println!("checked {files} file(s): {errors} error(s), {warnings} warning(s)");
    if files == 0 {
        anyhow::bail!("no pathway file found");
    }
    Ok(if errors > 0 || (deny_warnings && warnings > 0) {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

async fn report(
    store: &str,
    pathways: &std::path::Path,
    out: &std::path::Path,
    tenant: Option<&str>,
) -> anyhow::Result<ExitCode> {
    let registry = serve::load_registry(pathways)?;
    let summary = if serve::is_postgres(store) {
        let s = serve::connect_postgres(store).await?;
        report::write(&s, registry, out, tenant).await?
    } else {
        let s = serve::open_existing_sqlite(store).await?;
        report::write(&s, registry, out, tenant).await?
    };
    println!(
        "wrote {}: {} pathway section(s), {} chart(s)",
        out.display(),
        summary.pathways,
        summary.charts
    );
    Ok(ExitCode::SUCCESS)
}

async fn replay(
    store: &str,
    pathways: &std::path::Path,
    repair: bool,
    catch_up: jiff::SignedDuration,
) -> anyhow::Result<ExitCode> {
    if serve::is_postgres(store) {
        replay_on(
            &serve::connect_postgres(store).await?,
            pathways,
            repair,
            catch_up,
        )
        .await
    } else {
        replay_on(
            &serve::open_existing_sqlite(store).await?,
            pathways,
            repair,
            catch_up,
        )
        .await
    }
}

async fn replay_on<S: parcours_store::EventStore + parcours_store::AuditLog>(
    store: &S,
    pathways: &std::path::Path,
    repair: bool,
    catch_up: jiff::SignedDuration,
) -> anyhow::Result<ExitCode> {
    let mut registry = serve::load_registry(pathways)?;
    serve::reconcile(store, &mut registry, "replay").await?;
    #[allow(clippy::disallowed_methods)]
    let started = std::time::Instant::now();
    let (report, replayed) =
        parcours_runtime::replay::verify_with(store, &registry, catch_up).await?;
    let secs = started.elapsed().as_secs_f64().max(1e-9);
    println!(
        "replayed {} records ({} inbound events) in {:.2} s ({:.0} records/s): {} instances, {} timer rows, {} work items",
        report.records,
        report.inbound,
        secs,
        report.records as f64 / secs,
        report.instances,
        report.timers,
        report.work_items
    );
    if report.agrees() {
        println!("the stored state equals the replay");
        return Ok(ExitCode::SUCCESS);
    }
    for m in &report.mismatches {
        println!("differs: {m}");
    }
    if repair {
        parcours_runtime::replay::repair(store, &replayed).await?;
        println!("repaired: the stored projections and snapshots are now the replayed ones");
        return Ok(ExitCode::SUCCESS);
    }
    println!("run again with --repair to replace the stored projections by the replayed ones");
    Ok(ExitCode::FAILURE)
}

/// A command's async work on a runtime of its own, its logging set up first (warnings
/// by default).
fn run_command(
    telemetry: &telemetry::TelemetryArgs,
    work: impl std::future::Future<Output = anyhow::Result<ExitCode>>,
) -> anyhow::Result<ExitCode> {
    let _telemetry = telemetry::init(telemetry, "warn")?;
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(work)
}

async fn publish(paths: &[PathBuf], store: &str) -> anyhow::Result<ExitCode> {
    let mut versions = Vec::new();
    let mut failed = false;
    for path in paths {
        anyhow::ensure!(
            path.exists(),
            "{}: no such file or directory",
            path.display()
        );
        for l in parcours_lang::load_all(path)? {
            if !l.report.diagnostics.is_empty() {
                eprint!("{}", l.report.render());
            }
            match &l.pathway {
                Some(p) => versions.push((p.id.clone(), p.version, l.path.display().to_string())),
                None => failed = true,
            }
        }
    }
    if failed {
        eprintln!("nothing published: a file has errors");
        return Ok(ExitCode::FAILURE);
    }
    anyhow::ensure!(!versions.is_empty(), "no pathway file found");
    if serve::is_postgres(store) {
        publish_on(&serve::connect_postgres(store).await?, &versions).await
    } else {
        publish_on(&serve::open_existing_sqlite(store).await?, &versions).await
    }
}

async fn publish_on<S: parcours_store::EventStore + parcours_store::AuditLog>(
    store: &S,
    versions: &[(String, u32, String)],
) -> anyhow::Result<ExitCode> {
    use parcours_runtime::publish::Publication;
    let mut new = 0;
    for (id, version, file) in versions {
        match serve::publish_file(store, id, *version, file, "publish").await {
            Ok(Publication::New) => {
                new += 1;
                println!("published: {id} v{version} ({file})");
            }
            Ok(Publication::Unchanged) => {
                println!("published already, the same text: {id} v{version} ({file})");
            }
            Err(e) => {
                eprintln!("{e:#}");
                return Ok(ExitCode::FAILURE);
            }
        }
    }
    if new > 0 {
        println!(
            "engines serving this log load the new version(s) within 10 s and enrol new patients in the highest; running patients stay on theirs (parcours migrate moves them)"
        );
    }
    Ok(ExitCode::SUCCESS)
}

async fn migrate(
    file: &std::path::Path,
    store: &str,
    pathways: &std::path::Path,
    apply: bool,
) -> anyhow::Result<ExitCode> {
    use anyhow::Context as _;
    let text =
        std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    let m = parcours_http::parse_migration(&file.display().to_string(), &text)
        .map_err(anyhow::Error::msg)?;
    if serve::is_postgres(store) {
        migrate_on(&serve::connect_postgres(store).await?, &m, pathways, apply).await
    } else {
        migrate_on(
            &serve::open_existing_sqlite(store).await?,
            &m,
            pathways,
            apply,
        )
        .await
    }
}

async fn migrate_on<S: parcours_store::EventStore + parcours_store::AuditLog>(
    store: &S,
    m: &parcours_runtime::migration::MigrationFile,
    pathways: &std::path::Path,
    apply: bool,
) -> anyhow::Result<ExitCode> {
    let mut registry = serve::load_registry(pathways)?;
    serve::reconcile(store, &mut registry, "migrate").await?;
    #[allow(clippy::disallowed_methods)]
    let now = jiff::Timestamp::now();
    let outcomes = parcours_runtime::migration::run(store, &registry, m, now, apply).await?;
    let moved: Vec<(Option<String>, Option<String>, String)> = outcomes
        .iter()
        .filter(|o| o.applied)
        .map(|o| {
            (
                Some(o.instance.to_string()),
                Some(m.tenant.clone()),
                format!("{} v{} to v{} ({})", m.pathway, m.from, m.to, m.migration),
            )
        })
        .collect();
    security::audit_change(
        store,
        &security::cli_actor("migrate"),
        "pathway.migrate",
        moved,
    )
    .await?;
    println!(
        "migration {}: {} v{} → v{} in {}{}",
        m.migration,
        m.pathway,
        m.from,
        m.to,
        m.tenant,
        if apply {
            ""
        } else {
            " (dry run: nothing is written)"
        }
    );
    let (mut ok, mut blocked, mut moved) = (0, 0, 0);
    for o in &outcomes {
        match &o.result {
            Ok(p) => {
                ok += 1;
                moved += usize::from(o.applied);
                let moves: Vec<String> = p
                    .moves
                    .iter()
                    .map(|(t, a, b)| {
                        if a == b {
                            format!("{t}: {a}")
                        } else {
                            format!("{t}: {a} → {b}")
                        }
                    })
                    .collect();
                println!(
                    "  {} {}; {} timer(s) cancelled, {} armed{}{}",
                    o.instance,
                    moves.join(", "),
                    p.cancelled_timers,
                    p.armed_timers,
                    if p.new_tracks.is_empty() {
                        String::new()
                    } else {
                        format!("; new tracks: {:?}", p.new_tracks)
                    },
                    if p.dropped.is_empty() {
                        String::new()
                    } else {
                        format!("; dropped: {}", p.dropped.join(", "))
                    }
                );
            }
            Err(e) => {
                blocked += 1;
                println!("  {} cannot move: {e}", o.instance);
            }
        }
    }
    if apply {
        println!("{moved} moved, {blocked} could not move");
    } else {
        println!("{ok} can move, {blocked} cannot; run again with --apply to move them");
    }
    Ok(if blocked == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn test(dir: &std::path::Path, filter: Option<&str>) -> anyhow::Result<ExitCode> {
    anyhow::ensure!(
        !dir.is_file(),
        "{}: give the directory holding the pathways and their scenarios/, not a file",
        dir.display()
    );
    let mut summary = parcours_scenario::run_dir(dir);
    if let Some(f) = filter {
        summary
            .outcomes
            .retain(|o| o.file.display().to_string().contains(f));
    }
    for e in &summary.errors {
        println!("ERROR {e}");
    }
    for o in &summary.outcomes {
        if o.passed() {
            println!("ok   {} — {}", o.file.display(), o.name);
        } else {
            println!("FAIL {} — {}", o.file.display(), o.name);
            for f in &o.failures {
                println!("     {f}");
            }
        }
    }
    println!("{} passed, {} failed", summary.passed(), summary.failed());
    Ok(if summary.failed() == 0 && summary.passed() > 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// A duration flag: jiff's friendly form (`10m`, `1h 30m`, `90s`), ISO 8601 (`PT10M`), or
/// whole seconds (`600`); not negative.
fn parse_duration(s: &str) -> Result<jiff::SignedDuration, String> {
    let d = match s.trim().parse::<i64>() {
        Ok(secs) => jiff::SignedDuration::from_secs(secs),
        Err(_) => s
            .trim()
            .parse::<jiff::SignedDuration>()
            .map_err(|e| format!("a duration such as 10m, 90s or 600: {e}"))?,
    };
    if d.is_negative() {
        return Err("a duration of zero or more".into());
    }
    Ok(d)
}
