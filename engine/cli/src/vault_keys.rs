//! The vault's master keys as the commands take them, and `parcours rewrap-keys`, the
//! last step of a rotation of the master key.
//!
//! A rotation, with engines running: make a new key file; restart the engines with it
//! as `--vault-key` and the old one as `--previous-vault-key` (several engines: first
//! all of them with the new key as a previous one, so that each reads what another will
//! wrap with it); new patients' data keys are then wrapped by the new key, stored ones
//! still unwrap. `parcours rewrap-keys` with the same two flags wraps every stored key
//! again by the new one and scrubs the old wrappings from the database files; then the
//! engines restart without the previous key. Each run is in the audit trail
//! (`vault.rewrap`, the deployment's own entries: key ids and counts). `serve` refuses
//! to start when the log holds data keys that none of the keys given unwraps, naming
//! the key ids and how many keys each wraps.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context as _;
use parcours_store::{AuditLog, PatientKeys};
use parcours_vault::LocalKeyFile;

use crate::erase::{beside_log, vault_key_path};

/// The master key file `path` (created when `create` and missing), with the earlier
/// master keys of a rotation, which only unwrap.
pub(crate) fn provider(
    path: &Path,
    previous: &[PathBuf],
    create: bool,
) -> anyhow::Result<LocalKeyFile> {
    let current = if create {
        LocalKeyFile::load_or_create(path)
    } else {
        LocalKeyFile::load(path)
    }
    .with_context(|| format!("the vault key {}", path.display()))?;
    previous.iter().try_fold(current, |provider, file| {
        let earlier = || format!("the previous vault key {}", file.display());
        let older = LocalKeyFile::load(file).with_context(earlier)?;
        provider.with_previous(older).with_context(earlier)
    })
}

/// Refuse a provider that cannot unwrap every data key the log holds: an engine started
/// with the wrong key file (or a rotation's old key left out) would fail on each event
/// of those patients instead of at start.
pub(crate) async fn check_holds_every_key<S: PatientKeys>(
    store: &S,
    provider: &LocalKeyFile,
    path: &Path,
) -> anyhow::Result<()> {
    let ids = store
        .patient_key_ids()
        .await
        .context("reading which master keys wrap the patients' data keys")?;
    let missing: Vec<String> = ids
        .iter()
        .filter(|(id, _)| !provider.holds(id))
        .map(|(id, n)| format!("{n} wrapped by {id}"))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    let previous = provider.previous_key_ids();
    anyhow::bail!(
        "the log holds patient data keys that the vault key {} ({}{}) does not unwrap: {}. \
         Give the master key file that wrapped them as --vault-key, or, during a rotation, \
         as --previous-vault-key until `parcours rewrap-keys` has wrapped them again",
        path.display(),
        provider.key_id(),
        if previous.is_empty() {
            String::new()
        } else {
            format!(", previous {}", previous.join(", "))
        },
        missing.join("; ")
    )
}

/// The vault's master key and those it replaces, as `serve`, `erase` and `rewrap-keys`
/// take them.
#[derive(clap::Args, Debug, Clone)]
pub(crate) struct VaultKeyArgs {
    /// The master key file of patient data keys (local key provider: 32 random bytes;
    /// `serve` creates it if missing; keep it outside the log's backups). It wraps every
    /// new data key. Default: next to the SQLite log; with PostgreSQL, the identity key
    /// file.
    #[arg(long, env = "PARCOURS_VAULT_KEY")]
    pub(crate) vault_key: Option<PathBuf>,
    /// A master key file the vault key replaces (a rotation): it only unwraps the data
    /// keys it wrapped, until `parcours rewrap-keys` has wrapped them again by the vault
    /// key. Repeat for each, or separate them by commas.
    #[arg(
        long = "previous-vault-key",
        value_name = "FILE",
        value_delimiter = ',',
        env = "PARCOURS_PREVIOUS_VAULT_KEY"
    )]
    pub(crate) previous_vault_key: Vec<PathBuf>,
}

impl VaultKeyArgs {
    /// The provider these name for the log `store` (`identity_key`: the identity key
    /// file, the vault key's default with PostgreSQL), the current key created when
    /// `create` and missing.
    pub(crate) fn provider(
        &self,
        store: &str,
        identity_key: &Path,
        create: bool,
    ) -> anyhow::Result<(LocalKeyFile, PathBuf)> {
        let path = vault_key_path(store, self.vault_key.clone(), identity_key);
        Ok((provider(&path, &self.previous_vault_key, create)?, path))
    }
}

/// Arguments of `parcours rewrap-keys`.
#[derive(clap::Args, Debug)]
pub(crate) struct RewrapArgs {
    /// The event log: a SQLite file or a PostgreSQL URL.
    #[arg(long, default_value = "parcours.db", env = "PARCOURS_STORE")]
    store: String,
    /// The new key (`--vault-key`) and those that wrapped data keys before.
    #[command(flatten)]
    keys: VaultKeyArgs,
    /// The key file of pseudonymous subject keys (only where it is the vault key:
    /// PostgreSQL without --vault-key).
    #[arg(long, env = "PARCOURS_IDENTITY_KEY")]
    identity_key: Option<PathBuf>,
}

async fn rewrap_in<S: PatientKeys + AuditLog>(
    store: &S,
    provider: &LocalKeyFile,
) -> anyhow::Result<bool> {
    let report = parcours_vault::rewrap(provider, provider.key_id(), store)
        .await
        .context("wrapping the data keys again")?;
    // The deployment's own entry (no tenant): which keys, how many; never a subject.
    crate::security::audit_change(
        store,
        &crate::security::cli_actor("rewrap-keys"),
        "vault.rewrap",
        vec![(
            Some(provider.key_id().to_string()),
            None,
            format!(
                "data keys wrapped again by {} (previous: {}): {}; changed meanwhile: {}; \
                 left, no key given: {}",
                provider.key_id(),
                provider.previous_key_ids().join(", "),
                report.rewrapped,
                report.changed_meanwhile,
                report.unreadable.values().sum::<u64>()
            ),
        )],
    )
    .await?;
    let held: u64 = store
        .patient_key_ids()
        .await
        .context("counting the data keys")?
        .iter()
        .filter(|(id, _)| id == provider.key_id())
        .map(|(_, n)| n)
        .sum();
    println!(
        "{} data key(s) wrapped again by {} ({} erased or wrapped again meanwhile, left as \
         they were); {held} data key(s) are now wrapped by it{}",
        report.rewrapped,
        provider.key_id(),
        report.changed_meanwhile,
        if report.rewrapped > 0 {
            "; the old wrappings are scrubbed from the database files"
        } else {
            ""
        }
    );
    if report.unreadable.is_empty() {
        println!(
            "the previous key(s) are no longer needed by the log: restart the engines \
             without --previous-vault-key; keep the old key file as long as backups taken \
             before this run"
        );
        return Ok(true);
    }
    for (id, n) in &report.unreadable {
        eprintln!(
            "{n} data key(s) wrapped by {id}, which no key given unwraps, are left as they \
             were: run again with that master key file as --previous-vault-key"
        );
    }
    Ok(false)
}

/// Run `parcours rewrap-keys`.
pub(crate) fn run(args: RewrapArgs) -> anyhow::Result<ExitCode> {
    let identity_key = args
        .identity_key
        .clone()
        .unwrap_or_else(|| beside_log(&args.store, "identity.key"));
    if args.keys.previous_vault_key.is_empty() {
        anyhow::bail!(
            "give the master key file(s) that wrapped data keys before, as --previous-vault-key"
        );
    }
    let (provider, _) = args.keys.provider(&args.store, &identity_key, false)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let done = rt.block_on(async {
        if crate::serve::is_postgres(&args.store) {
            let store = crate::serve::connect_postgres(&args.store).await?;
            rewrap_in(&store, &provider).await
        } else {
            let store = crate::serve::open_existing_sqlite(&args.store).await?;
            let done = rewrap_in(&store, &provider).await;
            store.close().await;
            done
        }
    })?;
    Ok(if done {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
