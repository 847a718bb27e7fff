//! parcours-store-sqlite: the SQLite event log, the embedded default.
//!
//! One file, WAL journal, `synchronous = FULL` (a commit survives a power cut once
//! `append` returns). Every append runs in `BEGIN IMMEDIATE`, so there is one writer at a
//! time and the global position is commit order. Commits are written by one connection
//! of their own on a blocking thread (the `writer` module: rusqlite, statements kept
//! prepared, the index pages it touches kept in its cache from one commit to the next).
//!
//! SQLite's automatic WAL checkpoint runs inside the committing writer and halves its
//! throughput; it is turned off and a background task checkpoints instead, every 2 s
//! (`PASSIVE`, never blocking the writer; `RESTART` once the WAL passes 16 MiB, on the
//! writer's connection between two of its commits, so that it is written from its start
//! again instead of growing without end; a restart a reader held up is tried again half a
//! second later), stopped when the last handle on the store is dropped; sooner when a
//! commit leaves the WAL past 256 MiB (the writer learns the WAL's frames from SQLite's WAL
//! hook), so that it holds about 2 s of commits (~300 MiB at 8 000 events/s) but never much
//! more than 256 MiB, whatever the rate.
//!
//! [`EventStore::read_all`] (the relay, replay, projection rebuilds read the whole log
//! with it) goes through the `reader` module: pages read on a blocking thread by connections of
//! their own (rusqlite on the same SQLite), each row's values taken in place, instead of
//! each row sent from sqlx's worker thread through a channel.

use std::collections::HashMap;
use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
use parcours_store::{
    Appended, Codec, Commit, DeadLetter, DeadLetterFilter, EventStore, IndexChanges,
    InstanceFilter, InstanceRow, NewRecord, RecordHead, RecordView, Snapshot, StoreError,
    StoredDeadLetter, StoredId, StoredRecord, TimerRow, TimerScope, WorkFilter, WorkItem, WorkKind,
    WorkStatus,
};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteRow, SqliteSynchronous,
};
use sqlx::{QueryBuilder, Row, Sqlite, SqlitePool};

mod audit;
mod backup;
mod keys;
mod reader;
mod writer;

pub use backup::{BackupReport, backup};

/// The SQLite event log.
#[derive(Clone, Debug)]
pub struct SqliteStore {
    pool: SqlitePool,
    reader: Arc<reader::Reader>,
    writer: Arc<writer::Writer>,
    _checkpointer: Arc<Checkpointer>,
}

/// Stops the background WAL checkpoint task when the last store handle goes.
#[derive(Debug)]
struct Checkpointer(tokio::task::JoinHandle<()>);

impl Drop for Checkpointer {
    fn drop(&mut self) {
        self.0.abort();
    }
}

fn backend(e: sqlx::Error) -> StoreError {
    StoreError::Backend(e.to_string())
}

/// WAL frames (pages) beyond which the background checkpoint starts the WAL over
/// (4 096 frames = 16 MiB with 4 KiB pages).
const WAL_RESTART_FRAMES: i64 = 4_096;

/// The background task's tick: a restart of the WAL that found a reader on an older
/// snapshot is tried again at the next one.
const TICK: Duration = Duration::from_millis(500);

/// Ticks between two checkpoints (2 s). A checkpoint copies the latest frame of every
/// page written since the last one, and a restart holds the writer for 13–35 ms: every 2 s
/// rather than every 500 ms, the index pages many commits write are copied once, and the
/// writer is held a quarter as often (`loadgen ingest`, 64 × 1: +2–18 % events/s, the p99
/// of a commit 18–21 ms against 50–55 ms, 5 % fewer bytes written; the WAL then holds up
/// to ~300 MiB instead of ~75 at that rate, bounded by `WAL_EARLY_FRAMES`: benches/README.md).
const CHECKPOINT_TICKS: u32 = 4;

/// WAL frames after a commit past which the background task checkpoints at once rather
/// than at its next 2 s (65 536 frames = 256 MiB with 4 KiB pages): the WAL's size stays
/// bounded whatever the rate, however fast the machine.
const WAL_EARLY_FRAMES: i64 = 65_536;

/// When the background task checkpoints.
#[derive(Clone, Copy, Debug)]
struct Checkpoints {
    /// Its tick.
    tick: Duration,
    /// Ticks between two checkpoints.
    every: u32,
    /// WAL frames after a commit that make it checkpoint at once.
    early_frames: i64,
}

impl Checkpoints {
    const DEFAULT: Checkpoints = Checkpoints {
        tick: TICK,
        every: CHECKPOINT_TICKS,
        early_frames: WAL_EARLY_FRAMES,
    };
}

/// Bound parameters per statement stay well under SQLite's limit (32 766).
const ROWS_PER_STATEMENT: usize = 1_000;

/// `(tenant, subject) IN (VALUES (?, ?), …)` for these patients (two variables each).
fn push_patients_in(q: &mut QueryBuilder<Sqlite>, patients: &[(&str, &str)]) {
    q.push("(tenant, subject) IN (VALUES ");
    let mut sep = q.separated(", ");
    for (tenant, subject) in patients {
        sep.push("(")
            .push_bind_unseparated(*tenant)
            .push_unseparated(", ")
            .push_bind_unseparated(*subject)
            .push_unseparated(")");
    }
    q.push(")");
}

impl SqliteStore {
    /// Open (creating if needed) the log in a file, and bring its schema up to date.
    pub async fn open(path: &Path) -> Result<SqliteStore, StoreError> {
        let options = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true);
        SqliteStore::connect(options).await
    }

    /// Open from a URL (`sqlite://parcours.db`, `sqlite:parcours.db`); `sqlite::memory:`
    /// is refused: a log must outlive the process.
    pub async fn open_url(url: &str) -> Result<SqliteStore, StoreError> {
        if url.contains(":memory:") || url.contains("mode=memory") {
            return Err(StoreError::Backend(
                "an in-memory SQLite log would lose every event at exit: give a file".into(),
            ));
        }
        let options = SqliteConnectOptions::from_str(url)
            .map_err(backend)?
            .create_if_missing(true);
        SqliteStore::connect(options).await
    }

    async fn connect(options: SqliteConnectOptions) -> Result<SqliteStore, StoreError> {
        SqliteStore::connect_with(options, Checkpoints::DEFAULT).await
    }

    async fn connect_with(
        options: SqliteConnectOptions,
        checkpoints: Checkpoints,
    ) -> Result<SqliteStore, StoreError> {
        let options = options
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(Duration::from_secs(30))
            .foreign_keys(true)
            .pragma("wal_autocheckpoint", "0")
            // Statement journals (a multi-row insert that fails half-way is undone) in
            // memory instead of temporary files written page by page: they undo a
            // statement inside its transaction and play no part in durability.
            .pragma("temp_store", "memory");
        let reader = Arc::new(reader::Reader::new(options.get_filename()));
        let writer = Arc::new(writer::Writer::new(
            options.get_filename(),
            checkpoints.early_frames,
        ));
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(options)
            .await
            .map_err(backend)?;
        sqlx::migrate!("./migrations")
            .run(&pool)
            .await
            .map_err(|e| StoreError::Backend(format!("migrations: {e}")))?;
        let bg = pool.clone();
        let restarter = writer.clone();
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(checkpoints.tick);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut ticks = 0u32;
            let mut restart_pending = false;
            loop {
                // A commit that left the WAL past `early_frames` does not wait for the clock.
                let early = tokio::select! {
                    _ = tick.tick() => false,
                    () = restarter.wal_full() => true,
                };
                if bg.is_closed() {
                    return;
                }
                ticks += 1;
                if !early && !restart_pending && ticks < checkpoints.every {
                    continue;
                }
                ticks = 0;
                if !restart_pending {
                    // Best effort: a failed checkpoint is retried at the next one.
                    let Ok(row) = sqlx::query("PRAGMA wal_checkpoint(PASSIVE)")
                        .fetch_one(&bg)
                        .await
                    else {
                        continue;
                    };
                    // Under a steady stream of commits a passive checkpoint never catches
                    // up with the last frame, so the WAL is never started over: it grew
                    // to 3.2 GB in a 100 000-event run, every commit appending to a longer
                    // file (its fsync then also commits the file system's allocation).
                    // Past `WAL_RESTART_FRAMES`, a `RESTART` checkpoint waits for the
                    // writer in flight, copies the few frames the passive one left and
                    // makes the next commit write the WAL from its start again. A
                    // checkpoint never weakens durability: the frames it copies are
                    // committed and synced already. The restart runs on the writer's
                    // connection between two of its commits: from another connection it
                    // waited for a moment with no writer, which back-to-back commits
                    // seldom left (the WAL grew to 240 MiB in `tests/wal.rs`).
                    let frames: i64 = row.try_get(1).unwrap_or(0);
                    if frames <= WAL_RESTART_FRAMES {
                        continue;
                    }
                }
                let w = restarter.clone();
                let restarted = tokio::task::spawn_blocking(move || w.restart_wal()).await;
                // A reader on an older snapshot kept the WAL from starting over: at the
                // next tick, not the next checkpoint (the WAL grows meanwhile).
                restart_pending = !matches!(restarted, Ok(Ok(true)));
            }
        });
        Ok(SqliteStore {
            pool,
            reader,
            writer,
            _checkpointer: Arc::new(Checkpointer(task)),
        })
    }

    /// A read of the `reader` module, on a blocking thread.
    async fn on_reader<T: Send + 'static>(
        &self,
        read: impl FnOnce(&reader::Reader) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let reader = self.reader.clone();
        tokio::task::spawn_blocking(move || read(&reader))
            .await
            .map_err(|e| StoreError::Backend(format!("log reader: {e}")))?
    }

    /// Close the pool (waits for connections to be returned) after a last checkpoint.
    pub async fn close(&self) {
        let _ = sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)")
            .execute(&self.pool)
            .await;
        self.pool.close().await;
    }
}

fn nanos(t: Timestamp) -> i64 {
    // Instants parcours handles are far inside i64 nanoseconds (years 1678 to 2262).
    i64::try_from(t.as_nanosecond()).unwrap_or(i64::MAX)
}

fn from_nanos(n: i64) -> Result<Timestamp, StoreError> {
    Timestamp::from_nanosecond(i128::from(n))
        .map_err(|e| StoreError::Backend(format!("stored instant {n} out of range: {e}")))
}

fn to_i64(v: u64) -> Result<i64, StoreError> {
    i64::try_from(v).map_err(|_| StoreError::Backend(format!("{v} does not fit SQLite's integers")))
}

fn to_u64(v: i64) -> u64 {
    u64::try_from(v).unwrap_or_default()
}

fn limit_of(limit: usize) -> i64 {
    if limit == 0 {
        100
    } else {
        i64::try_from(limit).unwrap_or(i64::MAX)
    }
}

fn row_to_record(row: &SqliteRow) -> Result<StoredRecord, StoreError> {
    let position = to_u64(row.try_get("position").map_err(backend)?);
    let corrupt = |reason: String| StoreError::Corrupt { position, reason };
    let codec: i64 = row.try_get("codec").map_err(backend)?;
    let codec =
        Codec::from_tag(codec).ok_or_else(|| corrupt(format!("unknown codec tag {codec}")))?;
    let ts = |col: &str| -> Result<Timestamp, StoreError> {
        let s: String = row.try_get(col).map_err(backend)?;
        s.parse().map_err(|e| corrupt(format!("{col}: {e}")))
    };
    let type_version: i64 = row.try_get("type_version").map_err(backend)?;
    Ok(StoredRecord {
        position,
        stream: row.try_get("stream").map_err(backend)?,
        version: to_u64(row.try_get("version").map_err(backend)?),
        recorded_at: ts("recorded_at")?,
        record: NewRecord {
            id: row.try_get("id").map_err(backend)?,
            record_type: row.try_get("record_type").map_err(backend)?,
            type_version: u16::try_from(type_version)
                .map_err(|_| corrupt("type version out of range".into()))?,
            codec,
            tenant: row.try_get("tenant").map_err(backend)?,
            subject: row.try_get("subject").map_err(backend)?,
            occurred_at: ts("occurred_at")?,
            cause: row.try_get("cause").map_err(backend)?,
            payload: row.try_get("payload").map_err(backend)?,
        },
    })
}

fn row_to_instance(row: &SqliteRow) -> Result<InstanceRow, StoreError> {
    let version: i64 = row.try_get("pathway_version").map_err(backend)?;
    let cycle: i64 = row.try_get("cycle").map_err(backend)?;
    Ok(InstanceRow {
        stream: row.try_get("stream").map_err(backend)?,
        tenant: row.try_get("tenant").map_err(backend)?,
        subject: row.try_get("subject").map_err(backend)?,
        pathway_id: row.try_get("pathway_id").map_err(backend)?,
        pathway_version: u32::try_from(version).unwrap_or_default(),
        status: row.try_get("status").map_err(backend)?,
        closed_reason: row.try_get("closed_reason").map_err(backend)?,
        states: row.try_get("states").map_err(backend)?,
        cycle: u32::try_from(cycle).unwrap_or_default(),
        enrolled_at: from_nanos(row.try_get("enrolled_at").map_err(backend)?)?,
        updated_at: from_nanos(row.try_get("updated_at").map_err(backend)?)?,
        version: to_u64(row.try_get("version").map_err(backend)?),
    })
}

/// A timer row in a [`TimerScope`] bound as `?2` (partition count, `NULL` for every
/// timer) and `?3` (owned partitions, a JSON array): the partition computed from the
/// stored hash halves as `parcours_store::partition_of` does.
macro_rules! in_scope {
    () => {
        "(?2 IS NULL OR ((hash_hi % ?2) * (4294967296 % ?2) + hash_lo % ?2) % ?2 \
         IN (SELECT value FROM json_each(?3)))"
    };
}

fn scope_binds(scope: &TimerScope) -> (Option<i64>, String) {
    match scope.query_parts() {
        None => (None, "[]".into()),
        Some((count, owned)) => {
            let list: Vec<String> = owned.iter().map(i64::to_string).collect();
            (Some(count), format!("[{}]", list.join(",")))
        }
    }
}

fn row_to_timer(row: &SqliteRow) -> Result<TimerRow, StoreError> {
    // `fire_at` is when it fires; `due_at`, when set, its due instant (a catch-up grace).
    let fires = from_nanos(row.try_get("fire_at").map_err(backend)?)?;
    let due: Option<i64> = row.try_get("due_at").map_err(backend)?;
    Ok(TimerRow {
        id: row.try_get("id").map_err(backend)?,
        stream: row.try_get("stream").map_err(backend)?,
        tenant: row.try_get("tenant").map_err(backend)?,
        subject: row.try_get("subject").map_err(backend)?,
        fire_at: match due {
            Some(due) => from_nanos(due)?,
            None => fires,
        },
        not_before: due.map(|_| fires),
    })
}

fn row_to_dead_letter(row: &SqliteRow) -> Result<StoredDeadLetter, StoreError> {
    let at: String = row.try_get("received_at").map_err(backend)?;
    Ok(StoredDeadLetter {
        id: to_u64(row.try_get("id").map_err(backend)?),
        received_at: at
            .parse()
            .map_err(|e| StoreError::Backend(format!("received_at: {e}")))?,
        letter: DeadLetter {
            source: row.try_get("source").map_err(backend)?,
            tenant: row.try_get("tenant").map_err(backend)?,
            reason: row.try_get("reason").map_err(backend)?,
            payload: row.try_get("payload").map_err(backend)?,
        },
    })
}

fn row_to_work(row: &SqliteRow) -> Result<WorkItem, StoreError> {
    let kind: String = row.try_get("kind").map_err(backend)?;
    let status: String = row.try_get("status").map_err(backend)?;
    let due: Option<i64> = row.try_get("due_at").map_err(backend)?;
    let closed: Option<i64> = row.try_get("closed_at").map_err(backend)?;
    Ok(WorkItem {
        id: row.try_get("id").map_err(backend)?,
        kind: WorkKind::parse(&kind)
            .ok_or_else(|| StoreError::Backend(format!("unknown work kind {kind}")))?,
        stream: row.try_get("stream").map_err(backend)?,
        tenant: row.try_get("tenant").map_err(backend)?,
        subject: row.try_get("subject").map_err(backend)?,
        pathway_id: row.try_get("pathway_id").map_err(backend)?,
        code: row.try_get("code").map_err(backend)?,
        role: row.try_get("role").map_err(backend)?,
        title: row.try_get("title").map_err(backend)?,
        status: WorkStatus::parse(&status)
            .ok_or_else(|| StoreError::Backend(format!("unknown work status {status}")))?,
        priority: row.try_get("priority").map_err(backend)?,
        due_at: due.map(from_nanos).transpose()?,
        opened_at: from_nanos(row.try_get("opened_at").map_err(backend)?)?,
        opened_by: row.try_get("opened_by").map_err(backend)?,
        escalated_to: row.try_get("escalated_to").map_err(backend)?,
        closed_at: closed.map(from_nanos).transpose()?,
    })
}

impl EventStore for SqliteStore {
    /// Two: one written by the single writer while the next waits for it, so that the
    /// caller decides the next group meanwhile. At a steady rate one (the default of
    /// [`EventStore::steady_appends`]): a second commit costs a sync of its own, and
    /// small groups split in two gain nothing; for a backlog, and while a large group is
    /// written, up to a fifth more events a second (benches/README.md, "A second commit
    /// in flight on SQLite, for large groups").
    fn concurrent_appends(&self) -> usize {
        2
    }

    async fn append(&self, mut commit: Commit) -> Result<Appended, StoreError> {
        // The log's own clock: when the record was stored (never used by decide), and
        // what the commit's catch-up timers wait after.
        #[allow(clippy::disallowed_methods)]
        let now = Timestamp::now();
        commit.index.recorded_at(now);
        let recorded_at = now.to_string();
        let writer = self.writer.clone();
        tokio::task::spawn_blocking(move || writer.append(commit, &recorded_at))
            .await
            .map_err(|e| StoreError::Backend(format!("log writer: {e}")))?
    }

    async fn read_stream(
        &self,
        stream: &str,
        after_version: u64,
    ) -> Result<Vec<StoredRecord>, StoreError> {
        let rows =
            sqlx::query("SELECT * FROM records WHERE stream = ? AND version > ? ORDER BY version")
                .bind(stream)
                .bind(to_i64(after_version)?)
                .fetch_all(&self.pool)
                .await
                .map_err(backend)?;
        rows.iter().map(row_to_record).collect()
    }

    async fn read_streams_by_prefix(&self, prefix: &str) -> Result<Vec<StoredRecord>, StoreError> {
        // A range of the `(stream, version)` index (`BINARY`: byte order).
        let query = match parcours_store::prefix_end(prefix) {
            Some(end) => sqlx::query(
                "SELECT * FROM records WHERE stream >= ? AND stream < ? ORDER BY position",
            )
            .bind(prefix)
            .bind(end),
            None => sqlx::query("SELECT * FROM records WHERE stream >= ? ORDER BY position")
                .bind(prefix),
        };
        let rows = query.fetch_all(&self.pool).await.map_err(backend)?;
        rows.iter().map(row_to_record).collect()
    }

    async fn read_all(&self, after: u64, limit: usize) -> Result<Vec<StoredRecord>, StoreError> {
        let after = to_i64(after)?;
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.on_reader(move |r| r.read_all(after, limit)).await
    }

    async fn read_heads(&self, after: u64, limit: usize) -> Result<Vec<RecordHead>, StoreError> {
        let after = to_i64(after)?;
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.on_reader(move |r| r.read_heads(after, limit)).await
    }

    async fn read_at(&self, positions: &[u64]) -> Result<Vec<StoredRecord>, StoreError> {
        let mut positions = positions
            .iter()
            .map(|&p| to_i64(p))
            .collect::<Result<Vec<i64>, _>>()?;
        positions.sort_unstable();
        positions.dedup();
        self.on_reader(move |r| r.read_at(&positions)).await
    }

    async fn last_position(&self) -> Result<u64, StoreError> {
        // One row, NULL for an empty log; the rowid's maximum is the primary key's last
        // entry (no scan).
        let p: Option<i64> = sqlx::query_scalar("SELECT max(position) FROM records")
            .fetch_one(&self.pool)
            .await
            .map_err(backend)?;
        Ok(p.map(to_u64).unwrap_or(0))
    }

    async fn scan_all<A, F>(
        &self,
        after: u64,
        limit: usize,
        mut acc: A,
        mut visit: F,
    ) -> Result<(A, Option<u64>), StoreError>
    where
        A: Send + 'static,
        F: FnMut(&mut A, RecordView<'_>) + Send + 'static,
    {
        let after = to_i64(after)?;
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let reader = self.reader.clone();
        let task = tokio::task::spawn_blocking(move || {
            let last = reader.scan(after, limit, &mut |r| visit(&mut acc, r))?;
            Ok((acc, last))
        });
        match task.await {
            Ok(done) => done,
            // The visitor's panic is the caller's.
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(e) => Err(StoreError::Backend(format!("log reader: {e}"))),
        }
    }

    async fn contains(&self, id: &str) -> Result<bool, StoreError> {
        let seen: Option<i64> = sqlx::query_scalar("SELECT 1 FROM records WHERE id = ?")
            .bind(id)
            .fetch_optional(&self.pool)
            .await
            .map_err(backend)?;
        Ok(seen.is_some())
    }

    async fn stored_ids(&self, ids: &[String]) -> Result<Vec<String>, StoreError> {
        let mut out = Vec::new();
        for chunk in ids.chunks(ROWS_PER_STATEMENT) {
            let mut q = QueryBuilder::<Sqlite>::new("SELECT id FROM records WHERE id IN (");
            let mut sep = q.separated(", ");
            for id in chunk {
                sep.push_bind(id);
            }
            q.push(")");
            for row in q.build().fetch_all(&self.pool).await.map_err(backend)? {
                out.push(row.try_get("id").map_err(backend)?);
            }
        }
        Ok(out)
    }

    async fn stored_events(&self, ids: &[String]) -> Result<Vec<StoredId>, StoreError> {
        let mut out = Vec::new();
        for chunk in ids.chunks(ROWS_PER_STATEMENT) {
            let mut q = QueryBuilder::<Sqlite>::new(
                "SELECT id, tenant, subject, record_type, occurred_at FROM records WHERE id IN (",
            );
            let mut sep = q.separated(", ");
            for id in chunk {
                sep.push_bind(id);
            }
            q.push(")");
            for row in q.build().fetch_all(&self.pool).await.map_err(backend)? {
                out.push(StoredId {
                    id: row.try_get("id").map_err(backend)?,
                    tenant: row.try_get("tenant").map_err(backend)?,
                    subject: row.try_get("subject").map_err(backend)?,
                    record_type: row.try_get("record_type").map_err(backend)?,
                    occurred_at: row
                        .try_get::<String, _>("occurred_at")
                        .map_err(backend)?
                        .parse()
                        .map_err(|e| StoreError::Backend(format!("stored occurred_at: {e}")))?,
                });
            }
        }
        Ok(out)
    }

    async fn stream_version(&self, stream: &str) -> Result<u64, StoreError> {
        // One row, NULL for a stream without records.
        let v: Option<i64> =
            sqlx::query_scalar("SELECT max(version) FROM records WHERE stream = ?")
                .bind(stream)
                .fetch_one(&self.pool)
                .await
                .map_err(backend)?;
        Ok(v.map(to_u64).unwrap_or(0))
    }

    async fn stream_versions(&self, streams: &[String]) -> Result<Vec<u64>, StoreError> {
        let mut found: HashMap<String, u64> = HashMap::new();
        for chunk in streams.chunks(ROWS_PER_STATEMENT) {
            let mut q = QueryBuilder::<Sqlite>::new(
                "SELECT stream, max(version) AS version FROM records WHERE stream IN (",
            );
            let mut sep = q.separated(", ");
            for stream in chunk {
                sep.push_bind(stream);
            }
            q.push(") GROUP BY stream");
            for row in q.build().fetch_all(&self.pool).await.map_err(backend)? {
                let version: i64 = row.try_get("version").map_err(backend)?;
                found.insert(row.try_get("stream").map_err(backend)?, to_u64(version));
            }
        }
        Ok(streams
            .iter()
            .map(|s| found.get(s).copied().unwrap_or(0))
            .collect())
    }

    async fn latest_subjects(&self, streams: &[String]) -> Result<Vec<Option<String>>, StoreError> {
        let mut found: HashMap<String, String> = HashMap::new();
        for chunk in streams.chunks(ROWS_PER_STATEMENT) {
            // Each stream's last version, then its row: two probes of `(stream, version)`.
            let mut q = QueryBuilder::<Sqlite>::new(
                "SELECT r.stream, r.subject FROM records r JOIN \
                 (SELECT stream, max(version) AS version FROM records WHERE stream IN (",
            );
            let mut sep = q.separated(", ");
            for stream in chunk {
                sep.push_bind(stream);
            }
            q.push(") GROUP BY stream) m ON r.stream = m.stream AND r.version = m.version");
            for row in q.build().fetch_all(&self.pool).await.map_err(backend)? {
                found.insert(
                    row.try_get("stream").map_err(backend)?,
                    row.try_get("subject").map_err(backend)?,
                );
            }
        }
        Ok(streams.iter().map(|s| found.get(s).cloned()).collect())
    }

    async fn write_index(&self, changes: IndexChanges) -> Result<(), StoreError> {
        let writer = self.writer.clone();
        tokio::task::spawn_blocking(move || writer.write_index(changes))
            .await
            .map_err(|e| StoreError::Backend(format!("log writer: {e}")))?
    }

    async fn clear_index(&self) -> Result<(), StoreError> {
        let mut tx = self
            .pool
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(backend)?;
        for sql in [
            "DELETE FROM instances",
            "DELETE FROM timers",
            "DELETE FROM work_items",
            "DELETE FROM snapshots",
        ] {
            sqlx::query(sql).execute(&mut *tx).await.map_err(backend)?;
        }
        tx.commit().await.map_err(backend)
    }

    async fn instance(&self, stream: &str) -> Result<Option<InstanceRow>, StoreError> {
        sqlx::query("SELECT * FROM instances WHERE stream = ?")
            .bind(stream)
            .fetch_optional(&self.pool)
            .await
            .map_err(backend)?
            .as_ref()
            .map(row_to_instance)
            .transpose()
    }

    async fn instances_of(
        &self,
        tenant: &str,
        subject: &str,
    ) -> Result<Vec<InstanceRow>, StoreError> {
        let rows = sqlx::query(
            "SELECT * FROM instances WHERE tenant = ? AND subject = ? \
             ORDER BY enrolled_at, stream",
        )
        .bind(tenant)
        .bind(subject)
        .fetch_all(&self.pool)
        .await
        .map_err(backend)?;
        rows.iter().map(row_to_instance).collect()
    }

    async fn instances_of_many(
        &self,
        patients: &[(&str, &str)],
    ) -> Result<Vec<Vec<InstanceRow>>, StoreError> {
        let mut out = vec![Vec::new(); patients.len()];
        let mut index: HashMap<(&str, &str), usize> = HashMap::with_capacity(patients.len());
        for (i, p) in patients.iter().enumerate() {
            index.entry(*p).or_insert(i);
        }
        // Two variables a patient.
        for chunk in patients.chunks(ROWS_PER_STATEMENT / 2) {
            let mut q = QueryBuilder::<Sqlite>::new("SELECT * FROM instances WHERE ");
            push_patients_in(&mut q, chunk);
            q.push(" ORDER BY enrolled_at, stream");
            for row in q.build().fetch_all(&self.pool).await.map_err(backend)? {
                let instance = row_to_instance(&row)?;
                let at = index.get(&(instance.tenant.as_str(), instance.subject.as_str()));
                if let Some(&i) = at {
                    out[i].push(instance);
                }
            }
        }
        // A patient asked for twice gets the same list twice.
        for (i, p) in patients.iter().enumerate() {
            let first = index[p];
            if first != i {
                out[i] = out[first].clone();
            }
        }
        Ok(out)
    }

    async fn list_instances(&self, f: &InstanceFilter) -> Result<Vec<InstanceRow>, StoreError> {
        let mut q = QueryBuilder::<Sqlite>::new("SELECT * FROM instances WHERE tenant = ");
        q.push_bind(&f.tenant);
        if let Some(p) = &f.pathway_id {
            q.push(" AND pathway_id = ").push_bind(p);
        }
        if let Some(s) = &f.status {
            q.push(" AND status = ").push_bind(s);
        }
        if let Some(a) = &f.after_stream {
            q.push(" AND stream > ").push_bind(a);
        }
        q.push(" ORDER BY stream LIMIT ")
            .push_bind(limit_of(f.limit));
        let rows = q.build().fetch_all(&self.pool).await.map_err(backend)?;
        rows.iter().map(row_to_instance).collect()
    }

    async fn due_timers(
        &self,
        until: Timestamp,
        limit: usize,
        scope: &TimerScope,
    ) -> Result<Vec<TimerRow>, StoreError> {
        let (count, owned) = scope_binds(scope);
        let rows = sqlx::query(concat!(
            "SELECT * FROM timers WHERE fire_at <= ?1 AND ",
            in_scope!(),
            " ORDER BY fire_at, id LIMIT ?4"
        ))
        .bind(nanos(until))
        .bind(count)
        .bind(owned)
        .bind(limit_of(limit))
        .fetch_all(&self.pool)
        .await
        .map_err(backend)?;
        rows.iter().map(row_to_timer).collect()
    }

    async fn next_timer(&self, scope: &TimerScope) -> Result<Option<Timestamp>, StoreError> {
        let (count, owned) = scope_binds(scope);
        let next: Option<i64> = sqlx::query_scalar(concat!(
            "SELECT min(fire_at) FROM timers WHERE ?1 IS NULL AND ",
            in_scope!()
        ))
        .bind(Option::<i64>::None)
        .bind(count)
        .bind(owned)
        .fetch_one(&self.pool)
        .await
        .map_err(backend)?;
        next.map(from_nanos).transpose()
    }

    async fn count_timers(&self) -> Result<u64, StoreError> {
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM timers")
            .fetch_one(&self.pool)
            .await
            .map_err(backend)?;
        Ok(to_u64(n))
    }

    async fn work_items(&self, f: &WorkFilter) -> Result<Vec<WorkItem>, StoreError> {
        let mut q = QueryBuilder::<Sqlite>::new("SELECT * FROM work_items WHERE tenant = ");
        q.push_bind(&f.tenant);
        if let Some(r) = &f.role {
            q.push(" AND (role = ")
                .push_bind(r)
                .push(" OR escalated_to = ")
                .push_bind(r)
                .push(")");
        }
        if let Some(k) = f.kind {
            q.push(" AND kind = ").push_bind(k.as_str());
        }
        q.push(" AND status IN (");
        let mut statuses = q.separated(", ");
        for s in f.statuses() {
            statuses.push_bind(s.as_str());
        }
        q.push(")");
        if let Some(s) = &f.stream {
            q.push(" AND stream = ").push_bind(s);
        }
        // After the cursor in the listing's order: by due time, those without one
        // last, then by id.
        if let Some(c) = &f.after {
            match c.due_at {
                Some(due) => {
                    q.push(" AND (due_at IS NULL OR due_at > ")
                        .push_bind(nanos(due))
                        .push(" OR (due_at = ")
                        .push_bind(nanos(due))
                        .push(" AND id > ")
                        .push_bind(&c.id)
                        .push("))");
                }
                None => {
                    q.push(" AND due_at IS NULL AND id > ").push_bind(&c.id);
                }
            }
        }
        q.push(" ORDER BY due_at IS NULL, due_at, id LIMIT ")
            .push_bind(limit_of(f.limit));
        let rows = q.build().fetch_all(&self.pool).await.map_err(backend)?;
        rows.iter().map(row_to_work).collect()
    }

    async fn work_item(&self, id: &str) -> Result<Option<WorkItem>, StoreError> {
        sqlx::query("SELECT * FROM work_items WHERE id = ?")
            .bind(id)
            .fetch_optional(&self.pool)
            .await
            .map_err(backend)?
            .as_ref()
            .map(row_to_work)
            .transpose()
    }

    async fn snapshot(&self, stream: &str) -> Result<Option<Snapshot>, StoreError> {
        let Some(row) = sqlx::query("SELECT * FROM snapshots WHERE stream = ?")
            .bind(stream)
            .fetch_optional(&self.pool)
            .await
            .map_err(backend)?
        else {
            return Ok(None);
        };
        let codec: i64 = row.try_get("codec").map_err(backend)?;
        let type_version: i64 = row.try_get("type_version").map_err(backend)?;
        Ok(Some(Snapshot {
            stream: row.try_get("stream").map_err(backend)?,
            version: to_u64(row.try_get("version").map_err(backend)?),
            codec: Codec::from_tag(codec)
                .ok_or_else(|| StoreError::Backend(format!("snapshot codec tag {codec}")))?,
            type_version: u16::try_from(type_version).unwrap_or(u16::MAX),
            payload: row.try_get("payload").map_err(backend)?,
        }))
    }

    async fn dead_letter(&self, letter: DeadLetter) -> Result<u64, StoreError> {
        #[allow(clippy::disallowed_methods)]
        let now = Timestamp::now().to_string();
        let id: i64 = sqlx::query_scalar(
            "INSERT INTO dead_letters (received_at, source, tenant, reason, payload) \
             VALUES (?, ?, ?, ?, ?) RETURNING id",
        )
        .bind(now)
        .bind(&letter.source)
        .bind(&letter.tenant)
        .bind(&letter.reason)
        .bind(&letter.payload)
        .fetch_one(&self.pool)
        .await
        .map_err(backend)?;
        Ok(to_u64(id))
    }

    async fn dead_letters(
        &self,
        after: u64,
        limit: usize,
    ) -> Result<Vec<StoredDeadLetter>, StoreError> {
        let rows = sqlx::query("SELECT * FROM dead_letters WHERE id > ? ORDER BY id LIMIT ?")
            .bind(to_i64(after)?)
            .bind(limit_of(limit))
            .fetch_all(&self.pool)
            .await
            .map_err(backend)?;
        rows.iter().map(row_to_dead_letter).collect()
    }

    async fn list_dead_letters(
        &self,
        f: &DeadLetterFilter,
    ) -> Result<Vec<StoredDeadLetter>, StoreError> {
        let mut q = QueryBuilder::<Sqlite>::new("SELECT * FROM dead_letters WHERE 1 = 1");
        if let Some(t) = &f.tenant {
            q.push(" AND tenant = ").push_bind(t);
        }
        if let Some(src) = &f.source {
            // The source itself, or one of its front's (`nats` → `nats:<subject>`).
            q.push(" AND (source = ")
                .push_bind(src)
                .push(" OR substr(source, 1, ")
                .push_bind(i64::try_from(src.len() + 1).unwrap_or(i64::MAX))
                .push(") = ")
                .push_bind(format!("{src}:"))
                .push(")");
        }
        if let Some(before) = f.before {
            q.push(" AND id < ").push_bind(to_i64(before)?);
        }
        q.push(" ORDER BY id DESC LIMIT ")
            .push_bind(limit_of(f.limit));
        let rows = q.build().fetch_all(&self.pool).await.map_err(backend)?;
        rows.iter().map(row_to_dead_letter).collect()
    }

    async fn dead_letter_by_id(&self, id: u64) -> Result<Option<StoredDeadLetter>, StoreError> {
        let Ok(id) = i64::try_from(id) else {
            return Ok(None);
        };
        sqlx::query("SELECT * FROM dead_letters WHERE id = ?")
            .bind(id)
            .fetch_optional(&self.pool)
            .await
            .map_err(backend)?
            .as_ref()
            .map(row_to_dead_letter)
            .transpose()
    }

    async fn checkpoint(&self, name: &str) -> Result<Option<u64>, StoreError> {
        let pos: Option<i64> =
            sqlx::query_scalar("SELECT position FROM checkpoints WHERE name = ?")
                .bind(name)
                .fetch_optional(&self.pool)
                .await
                .map_err(backend)?;
        Ok(pos.map(to_u64))
    }

    async fn save_checkpoint(&self, name: &str, position: u64) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO checkpoints (name, position) VALUES (?, ?) \
             ON CONFLICT (name) DO UPDATE SET position = excluded.position",
        )
        .bind(name)
        .bind(to_i64(position)?)
        .execute(&self.pool)
        .await
        .map_err(backend)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use parcours_store::{Commit, StreamWrite};

    use super::*;

    /// A commit that leaves the WAL past `early_frames` has it checkpointed and started
    /// over at once. The clock here never checkpoints, so only that can.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_wal_past_its_bound_is_started_over_without_waiting_for_the_clock() {
        let dir = tempfile::tempdir().expect("temp dir");
        let options = SqliteConnectOptions::new()
            .filename(dir.path().join("log.db"))
            .create_if_missing(true);
        let checkpoints = Checkpoints {
            tick: Duration::from_secs(3600),
            every: u32::MAX,
            early_frames: 64,
        };
        let store = SqliteStore::connect_with(options, checkpoints)
            .await
            .expect("open");
        // 64 KiB a commit: 16 frames or more each.
        let commit = |version: u64| {
            let mut record = parcours_store::conformance::record(&format!("r-{version}"));
            record.payload = vec![7; 64 * 1024];
            Commit {
                writes: vec![StreamWrite {
                    stream: "i".into(),
                    expected_version: version,
                    records: vec![record],
                }],
                ..Commit::default()
            }
        };
        let mut version = 0;
        while store.writer.frames() <= 64 {
            store.append(commit(version)).await.expect("append");
            version += 1;
        }
        // Once the background task has started the WAL over, a commit writes it from its
        // first frame again.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            store.append(commit(version)).await.expect("append");
            version += 1;
            let frames = store.writer.frames();
            if frames <= 64 {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the WAL was not started over: {frames} frames after {version} commits"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}
