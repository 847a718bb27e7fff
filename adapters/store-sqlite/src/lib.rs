//! parcours-store-sqlite: the SQLite event log, the embedded default.
//!
//! One file, WAL journal, `synchronous = FULL` (a commit survives a power cut once
//! `append` returns). Every append runs in `BEGIN IMMEDIATE`, so there is one writer at a
//! time and the global position is commit order.

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use jiff::Timestamp;
use parcours_store::{Appended, Codec, Commit, EventStore, NewRecord, StoreError, StoredRecord};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Row, SqlitePool};

/// The SQLite event log.
#[derive(Clone, Debug)]
pub struct SqliteStore {
    pool: SqlitePool,
}

fn backend(e: sqlx::Error) -> StoreError {
    StoreError::Backend(e.to_string())
}

impl SqliteStore {
    /// Open (creating if needed) the log in a file, and bring its schema up to date.
    pub async fn open(path: &Path) -> Result<SqliteStore, StoreError> {
        let options = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true);
        SqliteStore::connect(options).await
    }

    /// Open from a URL (`sqlite://parcours.db`, `sqlite::memory:` is refused: a log must
    /// outlive the process).
    pub async fn open_url(url: &str) -> Result<SqliteStore, StoreError> {
        if url.contains(":memory:") {
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
        let options = options
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(Duration::from_secs(30))
            .foreign_keys(true);
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(options)
            .await
            .map_err(backend)?;
        sqlx::migrate!("./migrations")
            .run(&pool)
            .await
            .map_err(|e| StoreError::Backend(format!("migrations: {e}")))?;
        Ok(SqliteStore { pool })
    }

    /// Close the pool (waits for connections to be returned).
    pub async fn close(&self) {
        self.pool.close().await;
    }
}

fn row_to_record(row: &sqlx::sqlite::SqliteRow) -> Result<StoredRecord, StoreError> {
    let position: i64 = row.try_get("position").map_err(backend)?;
    let position = u64::try_from(position).unwrap_or_default();
    let corrupt = |reason: String| StoreError::Corrupt { position, reason };
    let codec: i64 = row.try_get("codec").map_err(backend)?;
    let codec =
        Codec::from_tag(codec).ok_or_else(|| corrupt(format!("unknown codec tag {codec}")))?;
    let ts = |col: &str| -> Result<Timestamp, StoreError> {
        let s: String = row.try_get(col).map_err(backend)?;
        s.parse().map_err(|e| corrupt(format!("{col}: {e}")))
    };
    let version: i64 = row.try_get("version").map_err(backend)?;
    let type_version: i64 = row.try_get("type_version").map_err(backend)?;
    Ok(StoredRecord {
        position,
        stream: row.try_get("stream").map_err(backend)?,
        version: u64::try_from(version).unwrap_or_default(),
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

fn to_i64(v: u64) -> Result<i64, StoreError> {
    i64::try_from(v).map_err(|_| StoreError::Backend(format!("{v} does not fit SQLite's integers")))
}

impl EventStore for SqliteStore {
    async fn append(&self, commit: Commit) -> Result<Appended, StoreError> {
        let mut tx = self
            .pool
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(backend)?;
        // Idempotency first: a commit already made is acknowledged whatever the versions.
        for w in &commit.writes {
            for r in &w.records {
                let seen: Option<i64> = sqlx::query_scalar("SELECT 1 FROM records WHERE id = ?")
                    .bind(&r.id)
                    .fetch_optional(&mut *tx)
                    .await
                    .map_err(backend)?;
                if seen.is_some() {
                    tx.rollback().await.map_err(backend)?;
                    return Ok(Appended::Duplicate);
                }
            }
        }
        // The log's own clock: when the record was stored (never used by decide).
        #[allow(clippy::disallowed_methods)]
        let recorded_at = Timestamp::now().to_string();
        let mut last_position = 0u64;
        for w in &commit.writes {
            let actual: Option<i64> =
                sqlx::query_scalar("SELECT version FROM streams WHERE stream = ?")
                    .bind(&w.stream)
                    .fetch_optional(&mut *tx)
                    .await
                    .map_err(backend)?;
            let actual = u64::try_from(actual.unwrap_or(0)).unwrap_or_default();
            if actual != w.expected_version {
                tx.rollback().await.map_err(backend)?;
                return Err(StoreError::Conflict {
                    stream: w.stream.clone(),
                    expected: w.expected_version,
                    actual,
                });
            }
            let mut version = actual;
            for r in &w.records {
                version += 1;
                let position: i64 = sqlx::query_scalar(
                    "INSERT INTO records (stream, version, id, record_type, type_version, codec, \
                     tenant, subject, occurred_at, recorded_at, cause, payload) \
                     VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING position",
                )
                .bind(&w.stream)
                .bind(to_i64(version)?)
                .bind(&r.id)
                .bind(&r.record_type)
                .bind(i64::from(r.type_version))
                .bind(r.codec.tag())
                .bind(&r.tenant)
                .bind(&r.subject)
                .bind(r.occurred_at.to_string())
                .bind(&recorded_at)
                .bind(&r.cause)
                .bind(&r.payload)
                .fetch_one(&mut *tx)
                .await
                .map_err(backend)?;
                last_position = last_position.max(u64::try_from(position).unwrap_or_default());
            }
            sqlx::query(
                "INSERT INTO streams (stream, version) VALUES (?, ?) \
                 ON CONFLICT (stream) DO UPDATE SET version = excluded.version",
            )
            .bind(&w.stream)
            .bind(to_i64(version)?)
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
        }
        tx.commit().await.map_err(backend)?;
        Ok(Appended::Committed { last_position })
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

    async fn read_all(&self, after: u64, limit: usize) -> Result<Vec<StoredRecord>, StoreError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows =
            sqlx::query("SELECT * FROM records WHERE position > ? ORDER BY position LIMIT ?")
                .bind(to_i64(after)?)
                .bind(limit)
                .fetch_all(&self.pool)
                .await
                .map_err(backend)?;
        rows.iter().map(row_to_record).collect()
    }

    async fn contains(&self, id: &str) -> Result<bool, StoreError> {
        let seen: Option<i64> = sqlx::query_scalar("SELECT 1 FROM records WHERE id = ?")
            .bind(id)
            .fetch_optional(&self.pool)
            .await
            .map_err(backend)?;
        Ok(seen.is_some())
    }

    async fn checkpoint(&self, name: &str) -> Result<Option<u64>, StoreError> {
        let pos: Option<i64> =
            sqlx::query_scalar("SELECT position FROM checkpoints WHERE name = ?")
                .bind(name)
                .fetch_optional(&self.pool)
                .await
                .map_err(backend)?;
        Ok(pos.map(|p| u64::try_from(p).unwrap_or_default()))
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
