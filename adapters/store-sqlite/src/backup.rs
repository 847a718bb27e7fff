//! [`backup`]: a consistent copy of a log, taken while engines write to it.
//!
//! `VACUUM INTO` on a connection of its own copies the log as one read transaction sees
//! it (WAL: the commits made before it began, each whole with its projections; commits
//! go on meanwhile and are not in the copy), compacted, into a new file. The copy is
//! written under `<dest>.partial` (mode 0600), checked (`PRAGMA integrity_check`),
//! synced, and only then linked as `dest` (the directory synced too): a crash or a
//! failed check never leaves a file under the backup's name, and an existing file is
//! never overwritten, not even one made under that name while the backup ran.
//! The connection never writes the log (a `VACUUM INTO` writes only its target; it
//! does not checkpoint the WAL when it closes, even as the last one) and creates
//! nothing: a path that holds no log is an error, not a new empty log.
//!
//! What the copy does not hold: the key files next to the log (identity, vault, API
//! keys), which are kept apart from it and its backups by design.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::Duration;

use parcours_store::StoreError;
use rusqlite::config::DbConfig;
use rusqlite::{Connection, OpenFlags, OptionalExtension};

/// What a backup holds, read back from the copy once it is checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackupReport {
    /// Records in the copy.
    pub records: u64,
    /// The highest global position in the copy (`None`: an empty log).
    pub last_position: Option<i64>,
    /// When the record at that position was committed (RFC 3339, as the log keeps it).
    pub last_recorded_at: Option<String>,
    /// The copy's size in bytes.
    pub bytes: u64,
}

fn failed(what: &str, path: &Path, e: impl std::fmt::Display) -> StoreError {
    StoreError::Backend(format!("backup: {what} {}: {e}", path.display()))
}

/// Copy the log at `source` into a new file `dest`, check the copy and report what it
/// holds. Blocking (run it on a blocking thread under an async runtime). `dest` must not
/// exist; a `<dest>.partial` left by an interrupted backup is replaced.
pub fn backup(source: &Path, dest: &Path) -> Result<BackupReport, StoreError> {
    if dest.exists() {
        return Err(StoreError::Backend(format!(
            "backup: {} exists: a backup never overwrites a file (give a new name)",
            dest.display()
        )));
    }
    if !source.is_file() {
        return Err(StoreError::Backend(format!(
            "backup: no log at {}",
            source.display()
        )));
    }
    // Read-write without create: a `VACUUM INTO` is refused on a `query_only` connection,
    // and a read-only one cannot open a WAL log whose `-shm` is missing. Nothing here
    // writes the log.
    let log = Connection::open_with_flags(
        source,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|e| failed("cannot open", source, e))?;
    log.busy_timeout(Duration::from_secs(30))
        .map_err(|e| failed("cannot open", source, e))?;
    // The last connection to close would checkpoint the WAL into the log: not this one.
    log.set_db_config(DbConfig::SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE, true)
        .map_err(|e| failed("cannot open", source, e))?;
    let is_log: bool = log
        .query_row(
            "SELECT count(*) = 1 FROM sqlite_schema WHERE type = 'table' AND name = 'records'",
            [],
            |row| row.get(0),
        )
        .map_err(|e| failed("cannot read", source, e))?;
    if !is_log {
        return Err(StoreError::Backend(format!(
            "backup: {} is not a parcours log (it has no `records` table)",
            source.display()
        )));
    }
    let partial = partial_path(dest);
    match std::fs::remove_file(&partial) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(failed("cannot remove", &partial, e)),
    }
    // Made empty first, readable by its owner only (it holds what the log holds); SQLite
    // writes into an empty file as into a new one.
    let mut made = std::fs::OpenOptions::new();
    made.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut made, 0o600);
    made.open(&partial)
        .map_err(|e| failed("cannot create", &partial, e))?;
    let target = partial
        .to_str()
        .ok_or_else(|| failed("the path is not UTF-8:", &partial, "rename it"))?;
    let copied = log.execute("VACUUM INTO ?1", [target]);
    drop(log);
    let report = copied
        .map_err(|e| failed("cannot write", &partial, e))
        .and_then(|_| check(&partial));
    let report = match report {
        Ok(r) => r,
        Err(e) => {
            // Never leave a copy that failed its check where it could be taken for one.
            let _ = std::fs::remove_file(&partial);
            return Err(e);
        }
    };
    File::open(&partial)
        .and_then(|f| f.sync_all())
        .map_err(|e| failed("cannot sync", &partial, e))?;
    place(&partial, dest)?;
    let dir = match dest.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| failed("cannot sync the directory", dir, e))?;
    Ok(report)
}

/// Give the checked copy its name without replacing a file made under that name since
/// the backup began: a hard link fails when `dest` exists (then the copy is removed and
/// the backup refused, as at the start). A file system without hard links (some network
/// shares) gets a rename after one more look, which a file made in between would lose to.
fn place(partial: &Path, dest: &Path) -> Result<(), StoreError> {
    match std::fs::hard_link(partial, dest) {
        Ok(()) => std::fs::remove_file(partial).map_err(|e| failed("cannot remove", partial, e)),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists || dest.exists() => {
            refused(partial, dest)
        }
        Err(_) => std::fs::rename(partial, dest).map_err(|e| failed("cannot rename to", dest, e)),
    }
}

/// The checked copy removed, the backup refused: `dest` appeared while it ran.
fn refused(partial: &Path, dest: &Path) -> Result<(), StoreError> {
    let _ = std::fs::remove_file(partial);
    Err(StoreError::Backend(format!(
        "backup: {} was made while the backup ran: a backup never overwrites a file \
         (give a new name)",
        dest.display()
    )))
}

/// `<dest>.partial`, where the copy is written before it is checked.
fn partial_path(dest: &Path) -> PathBuf {
    let mut p = dest.as_os_str().to_owned();
    p.push(".partial");
    PathBuf::from(p)
}

/// Check a copy whole and read what it holds.
fn check(copy: &Path) -> Result<BackupReport, StoreError> {
    let db = Connection::open_with_flags(
        copy,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|e| failed("cannot open the copy", copy, e))?;
    let mut problems = Vec::new();
    {
        let mut stmt = db
            .prepare("PRAGMA integrity_check")
            .map_err(|e| failed("cannot check", copy, e))?;
        let rows = stmt
            .query_map([], |row| row.get::<_, String>(0))
            .map_err(|e| failed("cannot check", copy, e))?;
        for row in rows {
            let line = row.map_err(|e| failed("cannot check", copy, e))?;
            if line != "ok" {
                problems.push(line);
            }
        }
    }
    if !problems.is_empty() {
        return Err(StoreError::Backend(format!(
            "backup: the copy {} fails SQLite's integrity check: {}",
            copy.display(),
            problems.join("; ")
        )));
    }
    let read = |e| failed("cannot read the copy", copy, e);
    let records: i64 = db
        .query_row("SELECT count(*) FROM records", [], |row| row.get(0))
        .map_err(read)?;
    let last: Option<(i64, String)> = db
        .query_row(
            "SELECT position, recorded_at FROM records ORDER BY position DESC LIMIT 1",
            [],
            |row| Ok((row.get(0)?, row.get(1)?)),
        )
        .optional()
        .map_err(read)?;
    drop(db);
    let bytes = std::fs::metadata(copy)
        .map_err(|e| failed("cannot read", copy, e))?
        .len();
    Ok(BackupReport {
        records: u64::try_from(records).unwrap_or(0),
        last_position: last.as_ref().map(|(p, _)| *p),
        last_recorded_at: last.map(|(_, at)| at),
        bytes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_copy_never_replaces_a_file_made_under_its_name_meanwhile() {
        let dir = tempfile::tempdir().expect("dir");
        let dest = dir.path().join("b.db");
        let partial = partial_path(&dest);
        std::fs::write(&partial, b"the checked copy").expect("copy");
        std::fs::write(&dest, b"somebody else's file").expect("dest");
        let refused = place(&partial, &dest).expect_err("refused").to_string();
        assert!(
            refused.contains("was made while the backup ran"),
            "{refused}"
        );
        assert_eq!(std::fs::read(&dest).expect("read"), b"somebody else's file");
        assert!(!partial.exists(), "the refused copy is removed");

        std::fs::remove_file(&dest).expect("remove");
        std::fs::write(&partial, b"the checked copy").expect("copy");
        place(&partial, &dest).expect("placed");
        assert_eq!(std::fs::read(&dest).expect("read"), b"the checked copy");
        assert!(!partial.exists());
    }
}
