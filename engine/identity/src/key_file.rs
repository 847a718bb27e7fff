//! Secret files made once: the identity key, the vault's master key, a local API key.
//!
//! Several processes may start at once on one directory without the file (two engines on
//! a shared volume). Each writes its candidate under a name of its own, then hard-links it
//! into place: the link is refused when the file exists, so exactly one candidate becomes
//! the file, whole, and every process reads that one.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// The bytes of the file at `path`, creating it (mode 0600) with `candidate` if there is
/// none. When several processes (or threads) race, one candidate wins and all get it.
pub fn create_once(path: &Path, candidate: &[u8]) -> std::io::Result<Vec<u8>> {
    match std::fs::read(path) {
        Ok(existing) => return Ok(existing),
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
        Err(_) => {}
    }
    let temporary = temporary_name(path);
    let written = write_new(&temporary, candidate);
    let placed = written.and_then(|()| std::fs::hard_link(&temporary, path));
    let _ = std::fs::remove_file(&temporary);
    match placed {
        Ok(()) => Ok(candidate.to_vec()),
        // Another process placed its candidate first: theirs is the file.
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => std::fs::read(path),
        // A file system without hard links: create the file in place (a race then fails
        // loudly on one side, `File exists`, rather than splitting the key).
        Err(_) => write_new(path, candidate).map(|()| candidate.to_vec()),
    }
}

/// A name beside `path` that no other process or thread uses.
fn temporary_name(path: &Path) -> PathBuf {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let name = path
        .file_name()
        .map_or_else(|| "key".into(), |n| n.to_string_lossy().into_owned());
    path.with_file_name(format!(".{name}.{}.{n}.new", std::process::id()))
}

/// Write a new file (refused if it exists), private to its owner, synced.
fn write_new(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path)?;
    file.write_all(bytes)?;
    file.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn racing_creators_all_get_the_one_file_that_won_whole() {
        for round in 0..20 {
            let dir = tempfile::tempdir().expect("dir");
            let path = dir.path().join("identity.key");
            let threads: Vec<_> = (0..8u8)
                .map(|t| {
                    let path = path.clone();
                    std::thread::spawn(move || create_once(&path, &[t; 32]).expect("a key"))
                })
                .collect();
            let got: Vec<Vec<u8>> = threads
                .into_iter()
                .map(|t| t.join().expect("thread"))
                .collect();
            let file = std::fs::read(&path).expect("the file");
            assert_eq!(file.len(), 32, "round {round}: whole");
            assert!(
                got.iter().all(|g| *g == file),
                "round {round}: one key for all"
            );
            let left: Vec<_> = std::fs::read_dir(dir.path())
                .expect("dir")
                .map(|e| e.expect("entry").file_name())
                .collect();
            assert_eq!(
                left.len(),
                1,
                "round {round}: no temporary file left: {left:?}"
            );
        }
    }

    #[test]
    fn an_existing_file_is_read_and_kept() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("k");
        std::fs::write(&path, b"existing").expect("write");
        assert_eq!(create_once(&path, b"other").expect("read"), b"existing");
        assert_eq!(std::fs::read(&path).expect("read"), b"existing");
    }

    #[cfg(unix)]
    #[test]
    fn a_created_file_is_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("k");
        create_once(&path, b"secret").expect("created");
        let mode = std::fs::metadata(&path).expect("meta").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}
