//! `parcours erase`: the right to erasure. A patient is named by their identifiers (the
//! INS, each IPP: `SYSTEM|VALUE`) or subject keys; with the keys the log's identity
//! links and merges join to them (an IPP's key linked to the INS named, and the other
//! way round), their data keys are destroyed (crypto-shredding), `patient.erased` is
//! recorded in the log and in the audit trail, and the tenant's dead letters that name
//! them (identifiers, `--name`) are deleted. Their events stay in the log: counts and
//! indicators do not change.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use parcours_identity::{PatientIdentifier, Pseudonymizer};
use parcours_store::{AuditEntry, AuditLog, AuditOutcome, EventStore, PatientKeys};
use parcours_vault::{ErasureReport, ErasureRequest, LocalKeyFile, Vault};

/// Arguments of `parcours erase`.
#[derive(clap::Args, Debug)]
pub(crate) struct EraseArgs {
    /// The event log: a SQLite file or a PostgreSQL URL.
    #[arg(long, default_value = "parcours.db", env = "PARCOURS_STORE")]
    store: String,
    /// The tenant (CPTS) of the patient.
    #[arg(long)]
    tenant: String,
    /// An identifier of the patient as sources send it, `SYSTEM|VALUE`: the INS
    /// (`1.2.250.1.213.1.4.8|<NIR>`), an IPP (`<assigning authority>|<IPP>`). Repeat
    /// for each; every subject key they give is erased.
    #[arg(long = "identifier", value_name = "SYSTEM|VALUE")]
    identifiers: Vec<String>,
    /// A pseudonymous subject key (`p-…`) to erase as well.
    #[arg(long = "subject", value_name = "KEY")]
    subjects: Vec<String>,
    /// A name of the patient (family or given): dead letters that contain it are deleted
    /// too. Repeat for each.
    #[arg(long = "name")]
    names: Vec<String>,
    /// The key file of pseudonymous subject keys (as given to `parcours serve`).
    #[arg(long, env = "PARCOURS_IDENTITY_KEY")]
    identity_key: Option<PathBuf>,
    /// The vault's master key, and those it replaces during a rotation (as given to
    /// `parcours serve`).
    #[command(flatten)]
    keys: crate::vault_keys::VaultKeyArgs,
}

impl EraseArgs {
    fn request(&self, pseudonymizer: Option<&Pseudonymizer>) -> anyhow::Result<ErasureRequest> {
        let mut subjects = self.subjects.clone();
        let mut needles = self.names.clone();
        for raw in &self.identifiers {
            let (system, value) = raw
                .split_once('|')
                .filter(|(s, v)| !s.is_empty() && !v.is_empty())
                .context("--identifier is SYSTEM|VALUE (e.g. 1.2.250.1.213.1.4.8|<NIR>)")?;
            let id = PatientIdentifier::written(system, value);
            let p = pseudonymizer.context("--identifier needs the identity key file")?;
            subjects.push(p.subject(&self.tenant, &id));
            needles.push(value.to_string());
        }
        subjects.sort();
        subjects.dedup();
        if subjects.is_empty() {
            anyhow::bail!("name the patient: --identifier SYSTEM|VALUE or --subject p-…");
        }
        Ok(ErasureRequest {
            tenant: self.tenant.clone(),
            subjects,
            needles,
            at: None,
        })
    }
}

/// The file of a SQLite log as `--store` names it (`parcours.db`, `sqlite://parcours.db`,
/// `sqlite:parcours.db?mode=rwc`).
pub(crate) fn sqlite_file(store: &str) -> &str {
    let base = store.strip_prefix("sqlite://").unwrap_or(store);
    let base = base.strip_prefix("sqlite:").unwrap_or(base);
    base.split('?').next().unwrap_or(base)
}

/// The key file next to a SQLite log (`<log>.<suffix>`), as `parcours serve` makes it.
pub(crate) fn beside_log(store: &str, suffix: &str) -> PathBuf {
    PathBuf::from(format!("{}.{suffix}", sqlite_file(store)))
}

/// The vault's master key file: the flag; else, next to a SQLite log; else (PostgreSQL:
/// every process must share it) the identity key file, whose bytes then also serve as
/// the vault's master key (HKDF keeps the two uses apart).
pub(crate) fn vault_key_path(store: &str, flag: Option<PathBuf>, identity_key: &Path) -> PathBuf {
    match flag {
        Some(p) => p,
        None if crate::serve::is_postgres(store) => identity_key.to_path_buf(),
        None => beside_log(store, "vault.key"),
    }
}

/// Record an erasure in the audit trail (one entry per subject key).
pub(crate) async fn audit<S: AuditLog>(
    store: &S,
    actor: &str,
    request: &ErasureRequest,
    report: &ErasureReport,
) -> anyhow::Result<()> {
    #[allow(clippy::disallowed_methods)]
    let at = request.at.unwrap_or_else(jiff::Timestamp::now);
    let entries = request
        .subjects
        .iter()
        .map(|s| AuditEntry {
            at,
            actor: actor.to_string(),
            action: "patient.erase".into(),
            target: Some(s.clone()),
            tenant: Some(request.tenant.clone()),
            outcome: AuditOutcome::Allowed,
            detail: Some(format!(
                "subject keys erased {} ({} through identity links and merges), data keys destroyed {}, dead letters deleted {}",
                report.subjects,
                report.subjects_linked,
                report.keys_destroyed,
                report.dead_letters_deleted
            )),
        })
        .collect();
    store.audit(entries).await.context("the audit trail")?;
    Ok(())
}

async fn erase_in<S>(
    store: S,
    provider: LocalKeyFile,
    request: ErasureRequest,
) -> anyhow::Result<()>
where
    S: EventStore + PatientKeys + AuditLog + Clone,
{
    // A log no engine of this release opened yet: the keys its earlier merges retired
    // lead to their survivors first, so the person's keys are found from either side.
    parcours_runtime::backfill::retirements(&store)
        .await
        .context("the identity retirements of earlier merges")?;
    let vault = Vault::new(provider, store.clone());
    let report = vault.erase(&request).await.context("erasing")?;
    audit(&store, "cli:erase", &request, &report).await?;
    println!(
        "erased in {}: {} subject key(s) ({} named, {} through identity links and merges), {} data key(s) destroyed, {} dead letter(s) deleted, {} erasure record(s) added to the log",
        request.tenant,
        report.subjects,
        report.subjects - report.subjects_linked,
        report.subjects_linked,
        report.keys_destroyed,
        report.dead_letters_deleted,
        report.recorded
    );
    Ok(())
}

/// Run `parcours erase`.
pub(crate) fn run(args: EraseArgs) -> anyhow::Result<std::process::ExitCode> {
    let identity_key = args
        .identity_key
        .clone()
        .unwrap_or_else(|| beside_log(&args.store, "identity.key"));
    let pseudonymizer = if args.identifiers.is_empty() {
        None
    } else {
        Some(load_identity(&identity_key)?)
    };
    let request = args.request(pseudonymizer.as_ref())?;
    let (provider, _) = args.keys.provider(&args.store, &identity_key, false)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        if crate::serve::is_postgres(&args.store) {
            let store = crate::serve::connect_postgres(&args.store).await?;
            erase_in(store, provider, request).await
        } else {
            let store = crate::serve::open_existing_sqlite(&args.store).await?;
            erase_in(store.clone(), provider, request).await?;
            store.close().await;
            Ok(())
        }
    })?;
    Ok(std::process::ExitCode::SUCCESS)
}

fn load_identity(path: &Path) -> anyhow::Result<Pseudonymizer> {
    Pseudonymizer::load(path).with_context(|| {
        format!(
            "the identity key {} (subject keys of the identifiers)",
            path.display()
        )
    })
}
