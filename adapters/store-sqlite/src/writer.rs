//! The log's writer: every commit ([`EventStore::append`](parcours_store::EventStore::append),
//! [`EventStore::write_index`](parcours_store::EventStore::write_index)) is written by one
//! connection of its own (rusqlite, on the SQLite sqlx-sqlite links), in one call on a
//! blocking thread: `BEGIN IMMEDIATE`, the idempotency and version checks, one prepared
//! statement per table stepped once per row, `COMMIT`.
//!
//! Through sqlx, a commit was a dozen statements, each sent to a pool connection's worker
//! thread and answered through a channel (a thread wake-up each way), multi-row statements
//! whose text changed with the number of rows (parsed again at almost every commit), and
//! each commit ran on whichever of the pool's connections was idle: another connection's
//! commit since its last use makes SQLite drop a connection's page cache, so every commit
//! read the indexes' pages again from the file (about ten `pread` a event). Here the
//! statements stay prepared, and the pages the indexes' writes touch stay in the writer's
//! cache from one commit to the next.
//!
//! Durability is the pool's: the same file in WAL, `synchronous = FULL` (checked when the
//! connection opens), `COMMIT` returns once the WAL is synced. The automatic WAL
//! checkpoint stays off (the store's background task checkpoints); SQLite's WAL hook tells
//! the writer how many frames the WAL holds after each commit, and past its bound
//! (`early_frames`) the writer asks the background task to checkpoint at once.

use std::cell::Cell;
use std::collections::HashMap;
use std::ffi::c_int;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use parcours_store::{Appended, Commit, IndexChanges, NewRecord, StoreError};
use rusqlite::hooks::Wal;
use rusqlite::{Connection, OpenFlags, params};
use tokio::sync::Notify;

use crate::{nanos, to_i64, to_u64};

/// The writer's page cache (KiB): the pages of the indexes a commit touches, kept from one
/// commit to the next (SQLite's default is 2 MiB).
const CACHE_KIB: i64 = 16 * 1024;

/// How long a commit waits for another connection's write lock (SQLite's busy handler).
const BUSY_WAIT: Duration = Duration::from_secs(30);

/// How long a WAL restart waits for readers on an older snapshot; commits wait for it.
const RESTART_WAIT: Duration = Duration::from_millis(200);

/// Statements the writer keeps prepared (it uses fourteen).
const STATEMENTS: usize = 32;

thread_local! {
    /// Frames in the WAL after the last commit made on this thread: SQLite calls the WAL
    /// hook inside `COMMIT`, on the committing thread, and the writer reads it right after.
    static WAL_FRAMES: Cell<c_int> = const { Cell::new(0) };
}

/// The writing connection's WAL hook (a plain function: it can only leave the count where
/// the thread that committed reads it).
fn note_wal_frames(_: &Wal, frames: c_int) -> rusqlite::Result<()> {
    WAL_FRAMES.set(frames);
    Ok(())
}

/// The one writing connection, opened on first use.
#[derive(Debug)]
pub(crate) struct Writer {
    path: PathBuf,
    conn: Mutex<Option<Connection>>,
    /// Frames in the WAL past which a commit asks for a checkpoint at once.
    early_frames: i64,
    /// Frames in the WAL after the last commit (the WAL started over: few again).
    frames: AtomicI64,
    /// Notified by a commit that left more than `early_frames` frames in the WAL.
    wal_full: Notify,
}

fn failed(e: rusqlite::Error) -> StoreError {
    StoreError::Backend(format!("log writer: {e}"))
}

impl Writer {
    /// A writer that asks for a checkpoint once a commit leaves more than `early_frames`
    /// frames in the WAL.
    pub(crate) fn new(path: &Path, early_frames: i64) -> Writer {
        Writer {
            path: path.to_path_buf(),
            conn: Mutex::new(None),
            early_frames,
            frames: AtomicI64::new(0),
            wal_full: Notify::new(),
        }
    }

    /// Resolves once a commit has left more than `early_frames` frames in the WAL since
    /// the last time it resolved.
    pub(crate) async fn wal_full(&self) {
        self.wal_full.notified().await;
    }

    /// Frames in the WAL after the last commit.
    #[cfg(test)]
    pub(crate) fn frames(&self) -> i64 {
        self.frames.load(Ordering::Relaxed)
    }

    fn lock(&self) -> MutexGuard<'_, Option<Connection>> {
        // A panic while writing left the connection in an unknown state: open another one
        // (its transaction, if any, was never committed, and goes with it).
        self.conn.lock().unwrap_or_else(|poisoned| {
            let mut guard = poisoned.into_inner();
            *guard = None;
            guard
        })
    }

    /// Run `write` in one `BEGIN IMMEDIATE` transaction, committed when it returns
    /// `Ok((true, _))`, rolled back otherwise (blocking).
    fn transaction<T>(
        &self,
        write: impl FnOnce(&Connection) -> Result<(bool, T), StoreError>,
    ) -> Result<T, StoreError> {
        let mut guard = self.lock();
        let conn = match guard.take() {
            Some(c) => c,
            None => open(&self.path)?,
        };
        let done = conn
            .execute_batch("BEGIN IMMEDIATE")
            .map_err(failed)
            .and_then(|()| write(&conn))
            .and_then(|(commit, out)| {
                WAL_FRAMES.set(0);
                conn.execute_batch(if commit { "COMMIT" } else { "ROLLBACK" })
                    .map_err(failed)?;
                let frames = i64::from(WAL_FRAMES.get());
                if frames > 0 {
                    self.frames.store(frames, Ordering::Relaxed);
                    if frames > self.early_frames {
                        self.wal_full.notify_one();
                    }
                }
                Ok(out)
            });
        if done.is_err() && !conn.is_autocommit() && conn.execute_batch("ROLLBACK").is_err() {
            // A transaction that cannot be ended: the connection goes, and its
            // transaction with it.
            return done;
        }
        *guard = Some(conn);
        done
    }

    /// Start the WAL over (a `RESTART` checkpoint) between two commits of this writer:
    /// none is in flight while it runs, so it waits only for readers still on an older
    /// snapshot — at most [`RESTART_WAIT`], then it is left to the next try (blocking).
    /// Whether the WAL was started over.
    pub(crate) fn restart_wal(&self) -> Result<bool, StoreError> {
        let mut guard = self.lock();
        let conn = match guard.take() {
            Some(c) => c,
            None => open(&self.path)?,
        };
        let done = conn
            .busy_timeout(RESTART_WAIT)
            .and_then(|()| {
                // (busy, frames in the WAL, frames copied): busy when a reader held it.
                conn.query_row("PRAGMA wal_checkpoint(RESTART)", [], |r| {
                    r.get::<_, i64>(0).map(|busy| busy == 0)
                })
            })
            .and_then(|restarted| conn.busy_timeout(BUSY_WAIT).map(|()| restarted))
            .map_err(failed);
        if done.is_ok() {
            *guard = Some(conn);
        }
        done
    }

    /// Append a commit (see [`EventStore::append`](parcours_store::EventStore::append)).
    pub(crate) fn append(&self, commit: Commit, recorded_at: &str) -> Result<Appended, StoreError> {
        self.transaction(|c| append_in(c, commit, recorded_at))
    }

    /// Write projection changes alone, in a transaction of their own.
    pub(crate) fn write_index(&self, changes: IndexChanges) -> Result<(), StoreError> {
        self.transaction(|c| write_index_in(c, changes).map(|()| (true, ())))
    }
}

/// The writing connection, with the pool's settings, its durability checked.
fn open(path: &Path) -> Result<Connection, StoreError> {
    // The pool created the file and its schema (migrations) before any write.
    let c = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(failed)?;
    c.busy_timeout(BUSY_WAIT).map_err(failed)?;
    c.pragma_update(None, "synchronous", "FULL")
        .map_err(failed)?;
    c.pragma_update(None, "foreign_keys", true)
        .map_err(failed)?;
    c.pragma_update(None, "wal_autocheckpoint", 0)
        .map_err(failed)?;
    c.pragma_update(None, "temp_store", "MEMORY")
        .map_err(failed)?;
    c.pragma_update(None, "cache_size", -CACHE_KIB)
        .map_err(failed)?;
    c.set_prepared_statement_cache_capacity(STATEMENTS);
    // WAL is the file's own mode (set by the pool, kept in the file); FULL = 2.
    let mode: String = c
        .query_row("PRAGMA journal_mode", [], |r| r.get(0))
        .map_err(failed)?;
    let sync: i64 = c
        .query_row("PRAGMA synchronous", [], |r| r.get(0))
        .map_err(failed)?;
    let auto: i64 = c
        .query_row("PRAGMA wal_autocheckpoint", [], |r| r.get(0))
        .map_err(failed)?;
    if !mode.eq_ignore_ascii_case("wal") || sync != 2 || auto != 0 {
        return Err(StoreError::Backend(format!(
            "log writer: journal mode {mode}, synchronous {sync}, automatic checkpoint \
             {auto}: expected WAL, FULL (2) and 0"
        )));
    }
    // After the checks: `wal_autocheckpoint` would replace the hook (SQLite's automatic
    // checkpoint is a WAL hook of its own).
    c.wal_hook(Some(note_wal_frames));
    Ok(c)
}

/// `(commit?, outcome)` of an append inside its transaction.
fn append_in(
    c: &Connection,
    commit: Commit,
    recorded_at: &str,
) -> Result<(bool, Appended), StoreError> {
    let Commit {
        writes,
        index,
        guards,
    } = commit;
    // Idempotency first: a commit already made is acknowledged whatever the versions.
    {
        let mut seen = c
            .prepare_cached("SELECT 1 FROM records WHERE id = ?1")
            .map_err(failed)?;
        for r in writes.iter().flat_map(|w| &w.records) {
            if seen.exists([&r.id]).map_err(failed)? {
                return Ok((false, Appended::Duplicate));
            }
        }
    }
    // Expected versions: each stream's last record (the `(stream, version)` index, one
    // descent per stream).
    let mut versions: HashMap<&str, u64> = HashMap::new();
    {
        let mut last = c
            .prepare_cached("SELECT max(version) FROM records WHERE stream = ?1")
            .map_err(failed)?;
        for w in &writes {
            if versions.contains_key(w.stream.as_str()) {
                continue;
            }
            let v: Option<i64> = last.query_row([&w.stream], |r| r.get(0)).map_err(failed)?;
            versions.insert(&w.stream, v.map(to_u64).unwrap_or(0));
        }
    }
    // Guards: the one writer serializes every commit, so the versions read here are
    // those the commit is written on.
    if !guards.is_empty() {
        let mut last = c
            .prepare_cached("SELECT max(version) FROM records WHERE stream = ?1")
            .map_err(failed)?;
        for g in &guards {
            let v: Option<i64> = last.query_row([&g.stream], |r| r.get(0)).map_err(failed)?;
            let actual = v.map(to_u64).unwrap_or(0);
            if actual != g.version {
                return Err(StoreError::Conflict {
                    stream: g.stream.clone(),
                    expected: g.version,
                    actual,
                });
            }
        }
    }
    let mut rows: Vec<(&str, i64, &NewRecord)> = Vec::new();
    for w in &writes {
        let actual = versions.get(w.stream.as_str()).copied().unwrap_or(0);
        if actual != w.expected_version {
            return Err(StoreError::Conflict {
                stream: w.stream.clone(),
                expected: w.expected_version,
                actual,
            });
        }
        let mut version = actual;
        for r in &w.records {
            version += 1;
            rows.push((&w.stream, to_i64(version)?, r));
        }
        versions.insert(&w.stream, version);
    }
    let mut last_position = 0u64;
    {
        let mut insert = c
            .prepare_cached(
                "INSERT INTO records (stream, version, id, record_type, type_version, codec, \
                 tenant, subject, occurred_at, recorded_at, cause, payload) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
            )
            .map_err(failed)?;
        for (stream, version, r) in rows {
            insert
                .execute(params![
                    stream,
                    version,
                    r.id,
                    r.record_type,
                    i64::from(r.type_version),
                    r.codec.tag(),
                    r.tenant,
                    r.subject,
                    r.occurred_at.to_string(),
                    recorded_at,
                    r.cause,
                    r.payload,
                ])
                .map_err(failed)?;
            // One writer, positions increasing: the last row's rowid is the commit's last
            // position.
            last_position = to_u64(c.last_insert_rowid());
        }
    }
    write_index_in(c, index)?;
    Ok((true, Appended::Committed { last_position }))
}

/// Apply index changes inside a transaction: deletes first, then inserts or replaces.
fn write_index_in(c: &Connection, changes: IndexChanges) -> Result<(), StoreError> {
    if changes.is_empty() {
        return Ok(());
    }
    let net = changes.net();
    if !net.timers_removed.is_empty() {
        let mut delete = c
            .prepare_cached("DELETE FROM timers WHERE id = ?1")
            .map_err(failed)?;
        for id in &net.timers_removed {
            delete.execute([id]).map_err(failed)?;
        }
    }
    if !net.work_removed.is_empty() {
        let mut delete = c
            .prepare_cached("DELETE FROM work_items WHERE id = ?1")
            .map_err(failed)?;
        for id in &net.work_removed {
            delete.execute([id]).map_err(failed)?;
        }
    }
    if !net.instances.is_empty() {
        // Insert, or update in place what changes with every event. The columns of the
        // secondary indexes (tenant, subject, pathway, status) are left out of the update:
        // naming them would rewrite an entry of each index, a page at a random place, for
        // every instance of every commit, while they change rarely (a closing, a merge).
        let mut upsert = c
            .prepare_cached(
                "INSERT INTO instances (stream, tenant, subject, pathway_id, pathway_version, \
                 status, closed_reason, states, cycle, enrolled_at, updated_at, version) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12) \
                 ON CONFLICT (stream) DO UPDATE SET pathway_version = excluded.pathway_version, \
                 closed_reason = excluded.closed_reason, states = excluded.states, \
                 cycle = excluded.cycle, enrolled_at = excluded.enrolled_at, \
                 updated_at = excluded.updated_at, version = excluded.version",
            )
            .map_err(failed)?;
        // Then the indexed columns, only where they differ.
        let mut indexed = c
            .prepare_cached(
                "UPDATE instances SET tenant = ?2, subject = ?3, pathway_id = ?4, status = ?5 \
                 WHERE stream = ?1 AND (tenant <> ?2 OR subject <> ?3 OR pathway_id <> ?4 \
                 OR status <> ?5)",
            )
            .map_err(failed)?;
        for r in &net.instances {
            upsert
                .execute(params![
                    r.stream,
                    r.tenant,
                    r.subject,
                    r.pathway_id,
                    i64::from(r.pathway_version),
                    r.status,
                    r.closed_reason,
                    r.states,
                    i64::from(r.cycle),
                    nanos(r.enrolled_at),
                    nanos(r.updated_at),
                    i64::try_from(r.version).unwrap_or(i64::MAX),
                ])
                .map_err(failed)?;
            indexed
                .execute(params![
                    r.stream,
                    r.tenant,
                    r.subject,
                    r.pathway_id,
                    r.status
                ])
                .map_err(failed)?;
        }
    }
    if !net.timers.is_empty() {
        let mut upsert = c
            .prepare_cached(
                "INSERT INTO timers (id, stream, tenant, subject, fire_at, hash_hi, hash_lo, \
                 due_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8) \
                 ON CONFLICT (id) DO UPDATE SET stream = excluded.stream, \
                 tenant = excluded.tenant, subject = excluded.subject, \
                 fire_at = excluded.fire_at, hash_hi = excluded.hash_hi, \
                 hash_lo = excluded.hash_lo, due_at = excluded.due_at",
            )
            .map_err(failed)?;
        for t in &net.timers {
            let (hi, lo) = parcours_store::subject_hash_halves(&t.tenant, &t.subject);
            upsert
                .execute(params![
                    t.id,
                    t.stream,
                    t.tenant,
                    t.subject,
                    nanos(t.fires_at()),
                    hi,
                    lo,
                    t.not_before.map(|_| nanos(t.fire_at))
                ])
                .map_err(failed)?;
        }
    }
    if !net.work.is_empty() {
        let mut upsert = c
            .prepare_cached(
                "INSERT OR REPLACE INTO work_items (id, kind, stream, tenant, subject, \
                 pathway_id, code, role, title, status, priority, due_at, opened_at, opened_by, \
                 escalated_to, closed_at) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16)",
            )
            .map_err(failed)?;
        for w in &net.work {
            upsert
                .execute(params![
                    w.id,
                    w.kind.as_str(),
                    w.stream,
                    w.tenant,
                    w.subject,
                    w.pathway_id,
                    w.code,
                    w.role,
                    w.title,
                    w.status.as_str(),
                    w.priority,
                    w.due_at.map(nanos),
                    nanos(w.opened_at),
                    w.opened_by,
                    w.escalated_to,
                    w.closed_at.map(nanos),
                ])
                .map_err(failed)?;
        }
    }
    if !net.work_status.is_empty() {
        let mut status = c
            .prepare_cached(
                "UPDATE work_items SET status = ?1, escalated_to = coalesce(?3, escalated_to), \
                 priority = coalesce(?4, priority), closed_at = coalesce(?5, closed_at) \
                 WHERE id = ?2",
            )
            .map_err(failed)?;
        for u in &net.work_status {
            status
                .execute(params![
                    u.status.as_str(),
                    u.id,
                    u.escalated_to,
                    u.priority,
                    u.closed_at.map(nanos)
                ])
                .map_err(failed)?;
        }
    }
    if !net.snapshots.is_empty() {
        let mut upsert = c
            .prepare_cached(
                "INSERT OR REPLACE INTO snapshots (stream, version, codec, type_version, \
                 payload) VALUES (?1, ?2, ?3, ?4, ?5)",
            )
            .map_err(failed)?;
        for s in &net.snapshots {
            upsert
                .execute(params![
                    s.stream,
                    i64::try_from(s.version).unwrap_or(i64::MAX),
                    s.codec.tag(),
                    i64::from(s.type_version),
                    s.payload,
                ])
                .map_err(failed)?;
        }
    }
    Ok(())
}
