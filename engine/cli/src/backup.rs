//! `parcours backup`: a consistent copy of a SQLite log into a new file, taken while
//! `parcours serve` keeps writing to it ([`parcours_store_sqlite::backup`]: every commit
//! whole, checked, synced, never overwriting a file). The key files next to the log are
//! not copied — they are kept apart from the log and its backups by design — and the
//! command names those it found. A PostgreSQL log is backed up with PostgreSQL's tools.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use crate::erase::{beside_log, sqlite_file};

/// Arguments of `parcours backup`.
#[derive(clap::Args, Debug)]
pub(crate) struct BackupArgs {
    /// The backup file to write; it must not exist.
    to: PathBuf,
    /// The event log: a SQLite file.
    #[arg(long, default_value = "parcours.db", env = "PARCOURS_STORE")]
    store: String,
}

/// The key files `parcours serve` keeps next to a SQLite log.
const KEY_FILES: [&str; 3] = ["identity.key", "vault.key", "api-key"];

pub(crate) fn run(args: BackupArgs) -> anyhow::Result<ExitCode> {
    if crate::serve::is_postgres(&args.store) {
        eprintln!(
            "parcours backup copies a SQLite log. Back up a PostgreSQL log with PostgreSQL's \
             own tools: pg_basebackup with WAL archiving (point-in-time recovery), or \
             pg_dump (README, \"Back it up\")."
        );
        return Ok(ExitCode::from(2));
    }
    let log = Path::new(sqlite_file(&args.store));
    #[allow(clippy::disallowed_methods)]
    let started = std::time::Instant::now();
    let report = parcours_store_sqlite::backup(log, &args.to)?;
    let secs = started.elapsed().as_secs_f64();
    let last = match (report.last_position, &report.last_recorded_at) {
        (Some(p), Some(at)) => format!(", up to position {p} (committed {at})"),
        _ => String::new(),
    };
    println!(
        "backed up {} to {}: {} records{last}, {:.1} MiB, checked, in {secs:.1} s",
        log.display(),
        args.to.display(),
        report.records,
        report.bytes as f64 / f64::from(1 << 20),
    );
    let keys: Vec<String> = KEY_FILES
        .iter()
        .map(|suffix| beside_log(&args.store, suffix))
        .filter(|p| p.exists())
        .map(|p| p.display().to_string())
        .collect();
    if !keys.is_empty() {
        println!(
            "not in the backup, by design: {} — back them up apart from the log (without the \
             identity key new messages get other subject keys; without the vault key the \
             tokenized fields cannot be read)",
            keys.join(", ")
        );
    }
    Ok(ExitCode::SUCCESS)
}
