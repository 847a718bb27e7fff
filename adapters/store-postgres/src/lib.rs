//! parcours-store-postgres: the PostgreSQL event log, for production.
//!
//! [`PgStore`] implements [`parcours_store::EventStore`] with the guarantees the
//! conformance suite checks (atomic commits, expected versions, idempotency by record
//! id, projections written in the same transaction) and runs on PostgreSQL 13 or later
//! (tested on 15). The schema is created and kept up to date by embedded migrations
//! when the store connects; every statement is a static, prepared query. An engine
//! starting connects with [`PgStore::connect_waiting`], which waits (logging why) while
//! the server does not answer yet and stops at once on what a person must fix.
//!
//! # Positions: why a reader never skips a record
//!
//! A sequence is not commit order in PostgreSQL: a transaction can take position 10,
//! another take 11 and commit first; a reader that saw 11 and asks for "after 11" never
//! sees 10. Storing the transaction id beside a sequence position and reading "only
//! transactions older than the oldest one running" does not close the hole either: the
//! id is assigned at the first write and the position at the insert, in either order,
//! so a lower position can belong to a younger transaction.
//!
//! Here the position *is* the transaction id. Every transaction that appends first calls
//! `parcours_begin_write()`, which
//! 1. refuses if the transaction already has an id (it must become a writer before its
//!    first write),
//! 2. takes a shared transaction-level advisory lock, the *writer mark*,
//! 3. gets its id, and returns `((id + xid_offset) << 20) + n`, the next free position
//!    of the transaction's range (2^20 positions per transaction).
//!
//! So positions sort by transaction id, and everything one transaction appends is in its
//! own range. [`EventStore::read_all`] returns only positions below
//! `parcours_read_bound()`, computed from the reading statement's own snapshot: the
//! lowest id among the transactions in flight at that snapshot that may be writers, or
//! the next id to be assigned if there are none. A reader therefore gets every committed
//! record below the bound (every transaction below it has ended, and the snapshot sees
//! all it committed), and every record that can still appear has a position above the
//! bound, hence above anything returned. `read_all(after)` with the last position seen
//! never skips, and never returns a record twice.
//!
//! "May be a writer": in flight at the snapshot, unless a single read of the lock table
//! (taken after the snapshot) shows the transaction still holding its own id lock but
//! not this database's writer mark. The mark and the id lock are matched by the holding
//! backend's pid (or virtual transaction): not by virtual transaction alone, which each
//! row of `pg_locks` reads live from its backend, and which a writer committing during
//! the read clears between its two rows — a reader then took it for a non-writer and
//! skipped its records now and then (migration 0007).
//! Such a transaction can never append (step 1), so it does not hold readers back: a long transaction elsewhere in the cluster (a
//! `CREATE INDEX`, another application's batch, another database) does not delay the
//! log's readers. Only the log's own writers do, and only for as long as they run. (On a
//! hot standby the lock table does not show the primary's transactions; the bound falls
//! back to the snapshot's oldest running transaction there.)
//!
//! When a page would be empty while a committed record after `after` is held back by an
//! older writer still running, `read_all` waits for it (at most
//! [`PgStoreOptions::read_wait`]), so a reader sees its own appends at once
//! (`read_heads`, the relay's tail, does not wait: the relay reads again at its next
//! round). Dead letters
//! are numbered the same way and listed with the same bound; a listing of them also
//! waits when its page is short while a committed letter after its last one is held back
//! (a transaction ending during the reading statement, in any database of the cluster,
//! holds the bound back for that statement), so it shows every letter kept before it.
//!
//! Positions are therefore sparse and large (about 2^20 apart per transaction) but
//! increase with commits as readers see them. A logical dump restored into a new cluster
//! starts with a younger transaction counter: on connect, `xid_offset` is raised so that
//! new positions stay above every stored one (physical backups, `pg_basebackup`,
//! `pg_upgrade` and replicas keep the counter and need nothing).
//!
//! # Schema
//!
//! (`migrations/`, run by [`PgStore::connect`] under sqlx's migration lock)
//!
//! | table | what | keys |
//! |---|---|---|
//! | `records` | the log: one row per record; payload `bytea` as given, codec tag, type and type version, instants as integer nanoseconds | `position` (primary), `id` (unique: idempotency), `(stream, version)` (unique), `(tenant, subject)` |
//! | `streams` | each stream's version; writers of a stream queue on its row | `stream` |
//! | `checkpoints` | named readers' positions | `name` |
//! | `dead_letters` | what could not be processed, with the reason | `id` (numbered like positions), `(tenant, id)` |
//! | `instances`, `timers`, `work_items`, `snapshots` | the projections (`IndexChanges`), written in the commit's transaction (a closed work item keeps its row: a status update, with `closed_at`, migration 0014) | as in the SQLite log, plus `(tenant, subject, enrolled_at)` |
//! | `log_meta` | one row: `xid_offset` | |
//!
//! Functions: `parcours_begin_write()` (the writer mark), `parcours_commit(…)` (a whole
//! commit: the writer mark, the streams locked in name order with their versions read,
//! the duplicate and version checks, then the records, the stream versions and every
//! projection from bound arrays, `UNNEST`; the look-ups are index probes whatever the
//! statistics, migrations 0008 and 0009), `parcours_commit_guarded(…)` (a commit with
//! guards, `parcours_store::Guard`, migration 0016: the guards' lock names hashed into
//! 128 transaction-level advisory locks, each taken shared when every guard under it is,
//! exclusive otherwise, in order — at most 128 lock slots a commit —; then the guarded
//! streams' versions, read after the locks were granted, so that a commit that held one
//! is seen committed; then `parcours_commit`, called as an expression since migration
//! 0018 — as a query of its own it cost ~10–14 % of the commit —; a commit without guards
//! calls `parcours_commit` directly), `parcours_write_index(…)` (projection changes
//! alone), `parcours_read_bound()` (PL/pgSQL since migration 0017, which keeps its
//! plan per connection: as a SQL function it was planned at each call),
//! `parcours_patient_keys(tenants, subjects)` (the vault's read of a group's keys, one
//! primary-key probe each, its plan made once per connection, migration 0017),
//! `parcours_payload_json(codec, payload)`,
//! `parcours_ts(nanos)`; view `records_json`. A commit is one statement, its own
//! transaction, whatever its size: one round trip (it was four, `BEGIN`, a first call,
//! the write, `COMMIT`, before migration 0009; `parcours_begin_commit`, the first call,
//! is kept for engines of that time during an upgrade). The two commit functions plan
//! their statements once per connection (migration 0010: `plan_cache_mode =
//! force_generic_plan`, about 0.1 ms of planning saved a commit), with `enable_seqscan =
//! off` so that a plan made on a new database's empty tables still reaches rows by key,
//! and `jit = off`. A page of the log (`read_all`, `read_heads`) is read by
//! `parcours_read_page(after, limit)` and `parcours_read_heads(after, limit)` (migration
//! 0011): the primary key walked from the position up to the limit, every other plan
//! switched off, because with statistics a burst left behind the planner took a bitmap
//! scan and a sort of the whole rest of the log for each page.
//!
//! Payloads (`records`, `snapshots`) above TOAST's threshold (an enrolment's decision is
//! 3–10 KB of JSON) are compressed with lz4 where the server has it (migration 0006;
//! pglz otherwise, and for values written before): pglz was about a tenth of the server's
//! CPU under a burst of enrolments.
//!
//! Text keys use the `"C"` collation: byte order, as in the SQLite log, on any server
//! locale. Instants are `bigint` nanoseconds since the Unix epoch (exact; from
//! 1677-09-21 to 2262-04-11 — an instant outside is refused with an error, never
//! stored wrong). `parcours_ts(bigint)` shows one as `timestamptz`.
//!
//! JSON payloads are queryable without a second copy on every write: the view
//! `records_json` adds `body jsonb` (`parcours_payload_json(codec, payload)`: NULL for
//! bincode or for bytes `jsonb` does not take, never an error) and timestamps. Measured
//! here, a stored generated `jsonb` column doubled the table and made inserts 2.3 times
//! slower; where a query is frequent, an expression index does the job:
//! `CREATE INDEX ON records USING gin (parcours_payload_json(codec, payload))`.
//!
//! `records` is append-only: a trigger refuses `UPDATE`, `DELETE` and `TRUNCATE`, and
//! another refuses an `INSERT` by a transaction without the writer mark (`log_meta`'s row
//! cannot be deleted either).
//!
//! # Connecting
//!
//! URLs are libpq's, as sqlx reads them:
//! - `postgres://parcours:secret@db.example:5432/parcours`
//! - `postgresql://parcours@db.example/parcours?application_name=parcours-a`
//! - a Unix socket: `postgres://parcours@localhost/parcours?host=/var/run/postgresql`,
//!   or the socket directory percent-encoded as host,
//!   `postgres://parcours@%2Fvar%2Frun%2Fpostgresql/parcours`;
//! - `PGHOST`, `PGUSER`, `PGPASSWORD`, … and `~/.pgpass` fill what the URL leaves out
//!   (give the user in the URL or `PGUSER`: sqlx does not default to the OS user).
//!
//! TLS is rustls, trusting the system's certificate store (where a hospital installs its
//! own CA) or the URL's `sslrootcert=/path/ca.pem`. `sslmode` is libpq's: across a
//! network use `sslmode=verify-full`; `require` encrypts without checking the server.
//! Without `sslmode` in the URL (or `PGSSLMODE`), parcours uses `allow` where libpq
//! would use `prefer`: plain unless the server demands TLS. The reason is a cost: sqlx
//! 0.9 does not set `TCP_NODELAY`, and over TLS every message longer than a TLS record
//! (16 KiB) waits for the server's delayed ACK — measured here, a commit of 1 000
//! records took 55 ms instead of 13 (16 000 instead of 75 000 records/s); commits of a
//! few records are not affected. Until sqlx sets the option again, prefer a Unix socket
//! or a private network, or accept that cost for large commits.
//!
//! # Operating notes
//!
//! - **Durability**: commits wait for the WAL flush. Each session forces
//!   `synchronous_commit = on` when the server or role says `off`/`local`; a stronger
//!   setting is kept. `fsync = off` is reported with a warning at connect. With
//!   synchronous replicas, a commit becomes visible to readers only once replicated, so
//!   the outbox never publishes what a failover could lose.
//! - **Unknown outcome**: if the connection drops during a commit, `append` returns
//!   [`StoreError::Backend`] and the commit may or may not be stored. Retrying is safe:
//!   a stored commit is acknowledged as a duplicate.
//! - **Readers and long writers**: a writer transaction left open (a stuck client) holds
//!   readers back. Sessions set `idle_in_transaction_session_timeout`
//!   ([`PgStoreOptions::idle_in_transaction_timeout`]); watch
//!   `pg_stat_activity` for old `xact_start` holding the `parcours` advisory lock
//!   (`classid = 1885434467`).
//! - **Indexes**: the log needs only its keys; `records_tenant_subject` serves per-patient
//!   audits. Add expression indexes on `parcours_payload_json(...)` for frequent JSON
//!   queries.
//! - **VACUUM**: `records` is insert-only; autovacuum's insert threshold keeps its
//!   visibility map current (index-only scans, cheap freezing). `timers` and `work_items`
//!   churn all day: they carry `autovacuum_vacuum_scale_factor = 0.05`. Plan
//!   anti-wraparound freezing of a large log like any large table.
//! - **Retention**: the log is the legal record (medical records are kept for 20 years
//!   and more); nothing deletes from it. Archive old positions by partitioning or by
//!   physical backups, never by `DELETE` (replay and audit need the whole log).
//! - **Dedicated database**: the schema lives in the connection's default schema; give
//!   parcours its own database.

use std::collections::HashMap;
use std::str::FromStr;
use std::time::Duration;

use jiff::Timestamp;
use parcours_store::{
    Appended, Commit, DeadLetter, DeadLetterFilter, EventStore, IndexChanges, InstanceFilter,
    InstanceRow, RecordHead, Snapshot, StoreError, StoredDeadLetter, StoredId, StoredRecord,
    StreamWrite, TimerRow, TimerScope, WorkFilter, WorkItem,
};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions, PgRow, PgSslMode};
use sqlx::{Connection as _, PgConnection, PgPool, Postgres, Row, Transaction};

mod audit;
mod keys;
pub mod lease;
mod rows;
mod sql;

pub use lease::Leases;
mod write;

/// A connection URL as it may be shown (logs, messages): its password, in the
/// user information (`postgres://user:password@host/db`) or as the `password` query
/// parameter, replaced by `<redacted>`; the user, host, database and other parameters
/// kept, for the operator to see where the engine connects.
pub fn redacted_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    let authority = match authority.rsplit_once('@') {
        Some((user_info, host)) => match user_info.split_once(':') {
            Some((user, _)) => format!("{user}:<redacted>@{host}"),
            None => format!("{user_info}@{host}"),
        },
        None => authority.to_string(),
    };
    let tail = match tail.split_once('?') {
        Some((path, query)) => {
            let query: Vec<String> = query
                .split('&')
                .map(|kv| match kv.split_once('=') {
                    Some((k, _)) if k.eq_ignore_ascii_case("password") => {
                        format!("{k}=<redacted>")
                    }
                    _ => kv.to_string(),
                })
                .collect();
            format!("{path}?{}", query.join("&"))
        }
        None => tail.to_string(),
    };
    format!("{scheme}://{authority}{tail}")
}

/// The reads repeated while the engine waits — the relay's and the dead-letter readers'
/// (is anything held back? the next page), the timer loop's (next and due timers) — and
/// the start's read of the published pathways (a prefix's streams): name, SQL, parameter
/// types, sample arguments. They must stay index scans however long the log grows; a
/// test checks their generic plans (prepared statements switch to those). Not an API.
#[doc(hidden)]
pub fn polled_queries() -> [(&'static str, &'static str, &'static str, &'static str); 8] {
    [
        (
            "read_streams_between",
            sql::READ_STREAMS_BETWEEN,
            "text, text",
            "'pathway/', 'pathway0'",
        ),
        ("read_all", sql::READ_ALL, "bigint, bigint", "1, 1000"),
        ("read_heads", sql::READ_HEADS, "bigint, bigint", "1, 1000"),
        ("any_record_after", sql::ANY_RECORD_AFTER, "bigint", "1"),
        (
            "dead_letters",
            sql::DEAD_LETTERS,
            "bigint, bigint",
            "1, 1000",
        ),
        (
            "any_dead_letter_after",
            sql::ANY_DEAD_LETTER_AFTER,
            "bigint",
            "1",
        ),
        (
            "due_timers",
            sql::DUE_TIMERS,
            "bigint, bigint, bigint[], bigint",
            "1, 16, '{0,1}', 1000",
        ),
        (
            "next_timer",
            sql::NEXT_TIMER,
            "bigint, bigint, bigint[]",
            "NULL, 16, '{0,1}'",
        ),
    ]
}

/// The keyed reads of a group commit whose generic plans must look each key up by its
/// index even when made on a small table that grew since (no `ANALYZE` yet: a new
/// database's first minutes): name, SQL, parameter types, sample arguments. A test checks
/// them. Not an API.
#[doc(hidden)]
pub fn per_group_queries() -> [(&'static str, &'static str, &'static str, &'static str); 1] {
    [(
        "patient_keys",
        sql::PATIENT_KEYS,
        "text[], text[]",
        "'{cpts-test}', '{p-7}'",
    )]
}

/// The keyed reads of `records` and `streams` made around a commit — which of a group's
/// ids are stored (`stored_ids`, and the check of a refused commit), the stream versions
/// of a group's new patients and of a refused commit, the identity links of a
/// submission's patients (`latest_subjects`) — whose generic plans must look
/// each key up by its index even when made on small tables that grew since: name, SQL,
/// parameter types, sample arguments. A test checks them. Not an API.
#[doc(hidden)]
pub fn per_commit_queries() -> [(&'static str, &'static str, &'static str, &'static str); 4] {
    [
        (
            "stream_versions",
            sql::STREAM_VERSIONS,
            "text[]",
            "'{i-0001,i-0002}'",
        ),
        ("any_stored", sql::ANY_STORED, "text[]", "'{r-0005,r-new}'"),
        ("stored_ids", sql::STORED_IDS, "text[]", "'{r-0005,r-new}'"),
        (
            "latest_subjects",
            sql::LATEST_SUBJECTS,
            "text[]",
            "'{i-0001,i-0002}'",
        ),
    ]
}

use rows::{limit_of, nanos, to_i64};
use write::{Outcome, WriteError};

/// The most records one transaction appends: the width of its position range.
pub const MAX_RECORDS_PER_TRANSACTION: usize = 1 << 20;

/// A pooled connection idle at least this long is tested before use (see `connect`).
const PING_IDLE: Duration = Duration::from_secs(1);

/// The embedded schema migrations.
static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// How many times `append` runs a commit again after a deadlock or a serialization
/// failure (the whole transaction was rolled back; running it again is safe).
const RETRIES: usize = 3;

/// The conflict a commit still deadlocked (40P01) or not serializable (40001) after
/// [`RETRIES`] is refused with: its first stream, at the version it expected (no stale
/// version to name).
fn contended(writes: &[StreamWrite]) -> StoreError {
    let (stream, version) = writes.first().map_or((String::new(), 0), |w| {
        (w.stream.clone(), w.expected_version)
    });
    StoreError::Conflict {
        stream,
        expected: version,
        actual: version,
    }
}

fn backend(e: sqlx::Error) -> StoreError {
    StoreError::Backend(e.to_string())
}

/// The SQLSTATE of a database error.
fn sqlstate(e: &sqlx::Error) -> Option<String> {
    e.as_database_error()
        .and_then(|d| d.code())
        .map(|c| c.into_owned())
}

/// Pool and session settings.
#[derive(Clone, Debug)]
pub struct PgStoreOptions {
    /// Most connections in the pool (appends, reads and the relay share them).
    pub max_connections: u32,
    /// How long a caller waits for a free connection before an error.
    pub acquire_timeout: Duration,
    /// How long `read_all` and `dead_letters` wait, at most, for an older writer to end
    /// when all they could return is held back by it.
    pub read_wait: Duration,
    /// `application_name` of the sessions, unless the URL sets one.
    pub application_name: String,
    /// `idle_in_transaction_session_timeout` of the sessions: a transaction left open by
    /// a stuck client is ended by the server (an open writer holds readers back).
    pub idle_in_transaction_timeout: Option<Duration>,
}

impl Default for PgStoreOptions {
    fn default() -> Self {
        PgStoreOptions {
            max_connections: 10,
            acquire_timeout: Duration::from_secs(30),
            read_wait: Duration::from_millis(200),
            application_name: "parcours".into(),
            idle_in_transaction_timeout: Some(Duration::from_secs(60)),
        }
    }
}

/// The first and longest pauses between two tries of [`PgStore::connect_waiting`].
const CONNECT_RETRY: (Duration, Duration) = (Duration::from_millis(100), Duration::from_secs(5));

/// The sessions' settings from a URL and the options.
fn connect_options(url: &str, options: &PgStoreOptions) -> Result<PgConnectOptions, StoreError> {
    let mut connect = PgConnectOptions::from_str(url)
        .map_err(|e| StoreError::Backend(format!("invalid PostgreSQL URL: {e}")))?;
    // sqlx 0.9 does not set TCP_NODELAY, and over TLS a message longer than one TLS
    // record (16 KiB) then stalls on Nagle's algorithm and the server's delayed ACK:
    // measured here, commits of 1 000 records took 55 ms instead of 13. Where the URL
    // (or PGSSLMODE) does not ask for TLS, `allow` replaces libpq's `prefer`: plain
    // unless the server demands TLS.
    let asks_tls =
        url.to_ascii_lowercase().contains("sslmode=") || std::env::var_os("PGSSLMODE").is_some();
    if !asks_tls {
        connect = connect.ssl_mode(PgSslMode::Allow);
    }
    if connect.get_application_name().is_none() {
        connect = connect.application_name(&options.application_name);
    }
    if let Some(timeout) = options.idle_in_transaction_timeout {
        connect = connect.options([(
            "idle_in_transaction_session_timeout",
            format!("{}ms", timeout.as_millis().max(1)),
        )]);
    }
    Ok(connect)
}

/// A connection error that may pass: nobody listening yet, a name not resolved yet, a
/// connection closed at once, the server starting up or shutting down (57P03), too many
/// connections (53300).
fn not_answering(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut => true,
        _ => sqlstate(e).is_some_and(|c| c == "57P03" || c == "53300"),
    }
}

/// The PostgreSQL event log. Cheap to clone (a pool handle).
#[derive(Clone, Debug)]
pub struct PgStore {
    pool: PgPool,
    read_wait: Duration,
}

impl PgStore {
    /// Connect with the default options and bring the schema up to date.
    pub async fn connect(url: &str) -> Result<PgStore, StoreError> {
        PgStore::connect_with(url, PgStoreOptions::default()).await
    }

    /// [`PgStore::connect_with`], waiting while the server does not answer — not
    /// listening yet (PostgreSQL started with the engine), starting up, too many
    /// connections: each failed try is logged with its cause and tried again after 0.1 s,
    /// doubling up to 5 s, for as long as it takes (drop the future to stop waiting).
    /// What a person must fix (credentials, a database that does not exist, TLS) is
    /// returned at once.
    pub async fn connect_waiting(
        url: &str,
        options: PgStoreOptions,
    ) -> Result<PgStore, StoreError> {
        let connect = connect_options(url, &options)?;
        let mut pause = CONNECT_RETRY.0;
        loop {
            // One connection first, for its error: the pool's says only that it timed out.
            match PgConnection::connect_with(&connect).await {
                Ok(conn) => {
                    let _ = conn.close().await;
                    return PgStore::connect_with(url, options).await;
                }
                Err(e) if not_answering(&e) => {
                    tracing::warn!(
                        error = %e,
                        retry_in = ?pause,
                        "PostgreSQL does not answer yet; trying again"
                    );
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(CONNECT_RETRY.1);
                }
                Err(e) => {
                    return Err(StoreError::Backend(format!(
                        "cannot connect to PostgreSQL: {e}"
                    )));
                }
            }
        }
    }

    /// Connect and bring the schema up to date (several processes may do so at once).
    pub async fn connect_with(url: &str, options: PgStoreOptions) -> Result<PgStore, StoreError> {
        let connect = connect_options(url, &options)?;
        let pool = PgPoolOptions::new()
            .max_connections(options.max_connections.max(1))
            // sqlx tests a connection when it goes back to the pool; testing it again
            // each time it is taken out cost a round trip before every statement of a
            // busy engine (the relay's reads, each commit). Only a connection idle for
            // a while is tested: one the server dropped meanwhile (a restart) is
            // replaced, not handed out.
            .test_before_acquire(false)
            .before_acquire(|conn, meta| {
                Box::pin(async move {
                    if meta.idle_for >= PING_IDLE {
                        sqlx::Connection::ping(conn).await?;
                    }
                    Ok(true)
                })
            })
            .acquire_timeout(options.acquire_timeout)
            .after_connect(|conn, _meta| {
                Box::pin(async move {
                    sqlx::query(sql::FORCE_SYNCHRONOUS_COMMIT)
                        .execute(conn)
                        .await
                        .map(|_| ())
                })
            })
            .connect_with(connect)
            .await
            .map_err(|e| StoreError::Backend(format!("cannot connect to PostgreSQL: {e}")))?;
        let store = PgStore {
            pool,
            read_wait: options.read_wait,
        };
        store.prepare().await?;
        Ok(store)
    }

    /// Migrations, the position floor, the durability check.
    async fn prepare(&self) -> Result<(), StoreError> {
        MIGRATOR
            .run(&self.pool)
            .await
            .map_err(|e| StoreError::Backend(format!("migrations: {e}")))?;
        let raised: Option<i64> = sqlx::query_scalar(sql::RAISE_POSITION_FLOOR)
            .fetch_optional(&self.pool)
            .await
            .map_err(backend)?;
        if let Some(offset) = raised {
            tracing::warn!(
                xid_offset = offset,
                "the log is ahead of this cluster's transaction counter (restored from a \
                 logical dump?): new positions continue above the stored ones"
            );
        }
        let (fsync, synchronous_commit): (String, String) =
            sqlx::query_as(sql::DURABILITY_SETTINGS)
                .fetch_one(&self.pool)
                .await
                .map_err(backend)?;
        if fsync != "on" {
            tracing::warn!(
                fsync,
                synchronous_commit,
                "fsync is off on the server: a crash can lose committed records"
            );
        }
        Ok(())
    }

    /// The connection pool (for operations tooling and tests).
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Begin a transaction that may append with [`PgStore::append_in`] after other
    /// writes of its own: it is marked as a log writer at once (see the crate docs).
    pub async fn begin(&self) -> Result<Transaction<'static, Postgres>, StoreError> {
        let mut tx = self.begin_read_committed().await?;
        sqlx::query("SELECT parcours_begin_write()")
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
        Ok(tx)
    }

    async fn begin_read_committed(&self) -> Result<Transaction<'static, Postgres>, StoreError> {
        self.pool
            .begin_with("BEGIN ISOLATION LEVEL READ COMMITTED")
            .await
            .map_err(backend)
    }

    /// Append a commit inside a transaction the caller owns and commits: its records
    /// reach readers when that transaction commits. The transaction must come from
    /// [`PgStore::begin`], or not have written anything yet (it is refused otherwise);
    /// several appends in one transaction are fine. The checks are those of
    /// [`EventStore::append`]; on a duplicate or a conflict nothing is written and the
    /// transaction stays usable; on a database error it is aborted.
    pub async fn append_in(
        &self,
        conn: &mut PgConnection,
        mut commit: Commit,
    ) -> Result<Appended, StoreError> {
        let now = recorded_at();
        commit.index.recorded_at(now);
        let net = commit.index.net();
        match write::write_commit(conn, &commit.writes, &commit.guards, &net, nanos(now)?).await {
            Ok(outcome) => into_appended(outcome),
            Err(WriteError::Refused(e)) => Err(e),
            Err(WriteError::Db(e)) => self.classify(&commit.writes, e).await,
        }
    }

    /// Close the pool, waiting for connections in use to come back.
    pub async fn close(&self) {
        self.pool.close().await;
    }

    /// After a unique violation (a commit raced this one and won): a duplicate, a
    /// conflict, or the error itself when neither explains it.
    async fn classify(
        &self,
        writes: &[StreamWrite],
        error: sqlx::Error,
    ) -> Result<Appended, StoreError> {
        let unique = error
            .as_database_error()
            .is_some_and(|d| d.is_unique_violation());
        if !unique {
            return Err(backend(error));
        }
        let ids = write::record_ids(writes);
        let dup: bool = sqlx::query_scalar(sql::ANY_STORED)
            .bind(&ids)
            .fetch_one(&self.pool)
            .await
            .map_err(backend)?;
        if dup {
            return Ok(Appended::Duplicate);
        }
        let mut streams: Vec<&str> = writes.iter().map(|w| w.stream.as_str()).collect();
        streams.sort_unstable();
        streams.dedup();
        let stored = self.stored_versions(&streams).await?;
        match write::first_conflict(writes, &stored) {
            Some((stream, expected, actual)) => Err(StoreError::Conflict {
                stream: stream.to_string(),
                expected,
                actual,
            }),
            None => Err(backend(error)),
        }
    }

    /// The last stored version of each of these streams that has records.
    async fn stored_versions(&self, streams: &[&str]) -> Result<HashMap<String, u64>, StoreError> {
        let rows: Vec<(String, i64)> = sqlx::query_as(sql::STREAM_VERSIONS)
            .bind(streams)
            .fetch_all(&self.pool)
            .await
            .map_err(backend)?;
        rows.into_iter()
            .map(|(stream, v)| Ok((stream, rows::to_u64(v, "stream version")?)))
            .collect()
    }

    /// Rows of `rows_sql` (after, limit) below the read bound; when there are none but
    /// `any_sql` (after) finds a committed row held back, wait for its writer to end (at
    /// most `wait`).
    ///
    /// `whole`: the name of the rows' key column when the caller wants every row
    /// committed before the call (a listing, not a tail that comes back): then a short
    /// page is also waited on while a committed row after its last key is held back.
    /// The bound holds back every transaction that ends between the reading statement's
    /// snapshot and its read of the lock table — in any database of the cluster — so a
    /// row committed before the call can be above it for that one statement.
    async fn settled(
        &self,
        rows_sql: &'static str,
        any_sql: &'static str,
        after: u64,
        limit: usize,
        whole: Option<&'static str>,
        wait: Duration,
    ) -> Result<Vec<PgRow>, StoreError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let after = to_i64(after, "position")?;
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let mut waited = Duration::ZERO;
        let mut pause = Duration::from_micros(500);
        loop {
            let rows = sqlx::query(rows_sql)
                .bind(after)
                .bind(limit)
                .fetch_all(&self.pool)
                .await
                .map_err(backend)?;
            let short = usize::try_from(limit).is_ok_and(|l| rows.len() < l);
            let last = match (whole, rows.last()) {
                (_, None) => after,
                (Some(key), Some(row)) if short => row.try_get(key).map_err(backend)?,
                _ => return Ok(rows),
            };
            if waited >= wait {
                return Ok(rows);
            }
            let held: bool = sqlx::query_scalar(any_sql)
                .bind(last)
                .fetch_one(&self.pool)
                .await
                .map_err(backend)?;
            if !held {
                return Ok(rows);
            }
            tokio::time::sleep(pause).await;
            waited += pause;
            pause = (pause * 2).min(Duration::from_millis(10));
        }
    }
}

/// The log's own clock: when a record was stored (never used by `decide`), and what a
/// commit's catch-up timers wait after ([`parcours_store::IndexChanges::recorded_at`]).
fn recorded_at() -> Timestamp {
    #[allow(clippy::disallowed_methods)]
    Timestamp::now()
}

fn into_appended(outcome: Outcome) -> Result<Appended, StoreError> {
    match outcome {
        Outcome::Written { last_position } => Ok(Appended::Committed { last_position }),
        Outcome::Duplicate => Ok(Appended::Duplicate),
        Outcome::Conflict {
            stream,
            expected,
            actual,
        } => Err(StoreError::Conflict {
            stream,
            expected,
            actual,
        }),
    }
}

impl EventStore for PgStore {
    /// Concurrent writers are safe for readers (positions are transaction ids, the read
    /// bound holds readers below a writer in flight); half the pool, so that reads and
    /// the relay still find connections.
    fn concurrent_appends(&self) -> usize {
        usize::try_from(self.pool.options().get_max_connections() / 2)
            .unwrap_or(1)
            .max(1)
    }

    /// Two: the server runs them side by side, so two in flight at a steady rate make
    /// fewer, larger groups than more would — at 2 000 events/s, a tenth to a fifth less
    /// CPU across the engine and the database than four, and a lower median
    /// (benches/README.md, "Two commits in flight at a steady rate").
    fn steady_appends(&self) -> usize {
        2
    }

    async fn append(&self, mut commit: Commit) -> Result<Appended, StoreError> {
        let now = recorded_at();
        commit.index.recorded_at(now);
        let net = commit.index.net();
        let writes = commit.writes;
        let guards = commit.guards;
        let recorded_at = nanos(now)?;
        let mut attempt = 0;
        loop {
            attempt += 1;
            // One statement, its own transaction: nothing to roll back on a refusal or an
            // error (the server ends a failed statement's transaction itself).
            let mut conn = self.pool.acquire().await.map_err(backend)?;
            match write::write_commit(&mut conn, &writes, &guards, &net, recorded_at).await {
                Ok(outcome) => return into_appended(outcome),
                Err(WriteError::Refused(e)) => return Err(e),
                Err(WriteError::Db(e)) => {
                    drop(conn);
                    let retry = matches!(sqlstate(&e).as_deref(), Some("40P01" | "40001"));
                    if retry && attempt <= RETRIES {
                        tracing::debug!(attempt, error = %e, "append retried");
                        continue;
                    }
                    if retry {
                        // Still deadlocked or not serializable after the retries: other
                        // writers keep getting there first, which the port calls a
                        // conflict (the caller decides again on fresh state).
                        return Err(contended(&writes));
                    }
                    return self.classify(&writes, e).await;
                }
            }
        }
    }

    async fn read_stream(
        &self,
        stream: &str,
        after_version: u64,
    ) -> Result<Vec<StoredRecord>, StoreError> {
        let rows = sqlx::query(sql::READ_STREAM)
            .bind(stream)
            .bind(to_i64(after_version, "version")?)
            .fetch_all(&self.pool)
            .await
            .map_err(backend)?;
        rows.iter().map(rows::record).collect()
    }

    async fn read_streams_by_prefix(&self, prefix: &str) -> Result<Vec<StoredRecord>, StoreError> {
        let query = match parcours_store::prefix_end(prefix) {
            Some(end) => sqlx::query(sql::READ_STREAMS_BETWEEN)
                .bind(prefix)
                .bind(end),
            None => sqlx::query(sql::READ_STREAMS_FROM).bind(prefix),
        };
        let rows = query.fetch_all(&self.pool).await.map_err(backend)?;
        rows.iter().map(rows::record).collect()
    }

    async fn read_all(&self, after: u64, limit: usize) -> Result<Vec<StoredRecord>, StoreError> {
        let rows = self
            .settled(
                sql::READ_ALL,
                sql::ANY_RECORD_AFTER,
                after,
                limit,
                None,
                self.read_wait,
            )
            .await?;
        rows.iter().map(rows::record).collect()
    }

    /// Does not wait for a writer holding the page back: its reader, the relay, comes
    /// back at its next round (waiting, each round's last read polled the log while the
    /// next commits were in flight: half a dozen reads a round under load).
    async fn read_heads(&self, after: u64, limit: usize) -> Result<Vec<RecordHead>, StoreError> {
        let rows = self
            .settled(
                sql::READ_HEADS,
                sql::ANY_RECORD_AFTER,
                after,
                limit,
                None,
                Duration::ZERO,
            )
            .await?;
        rows.iter().map(rows::head).collect()
    }

    async fn read_at(&self, positions: &[u64]) -> Result<Vec<StoredRecord>, StoreError> {
        if positions.is_empty() {
            return Ok(Vec::new());
        }
        let positions = positions
            .iter()
            .map(|&p| to_i64(p, "position"))
            .collect::<Result<Vec<i64>, _>>()?;
        let rows = sqlx::query(sql::READ_AT)
            .bind(&positions)
            .fetch_all(&self.pool)
            .await
            .map_err(backend)?;
        rows.iter().map(rows::record).collect()
    }

    async fn last_position(&self) -> Result<u64, StoreError> {
        let p: i64 = sqlx::query_scalar(sql::LAST_POSITION)
            .fetch_one(&self.pool)
            .await
            .map_err(backend)?;
        rows::to_u64(p, "position")
    }

    async fn contains(&self, id: &str) -> Result<bool, StoreError> {
        sqlx::query_scalar(sql::CONTAINS)
            .bind(id)
            .fetch_one(&self.pool)
            .await
            .map_err(backend)
    }

    async fn stored_ids(&self, ids: &[String]) -> Result<Vec<String>, StoreError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        sqlx::query_scalar(sql::STORED_IDS)
            .bind(ids)
            .fetch_all(&self.pool)
            .await
            .map_err(backend)
    }

    async fn stored_events(&self, ids: &[String]) -> Result<Vec<StoredId>, StoreError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let rows = sqlx::query(sql::STORED_EVENTS)
            .bind(ids)
            .fetch_all(&self.pool)
            .await
            .map_err(backend)?;
        rows.iter()
            .map(|row| {
                Ok(StoredId {
                    id: rows::get(row, "id")?,
                    tenant: rows::get(row, "tenant")?,
                    subject: rows::get(row, "subject")?,
                    record_type: rows::get(row, "record_type")?,
                    occurred_at: rows::from_nanos(rows::get(row, "occurred_at")?, "occurred_at")?,
                })
            })
            .collect()
    }

    async fn stream_version(&self, stream: &str) -> Result<u64, StoreError> {
        let v: Option<i64> = sqlx::query_scalar(sql::STREAM_VERSION)
            .bind(stream)
            .fetch_optional(&self.pool)
            .await
            .map_err(backend)?;
        v.map_or(Ok(0), |v| rows::to_u64(v, "stream version"))
    }

    async fn stream_versions(&self, streams: &[String]) -> Result<Vec<u64>, StoreError> {
        if streams.is_empty() {
            return Ok(Vec::new());
        }
        let asked: Vec<&str> = streams.iter().map(String::as_str).collect();
        let found = self.stored_versions(&asked).await?;
        Ok(streams
            .iter()
            .map(|s| found.get(s).copied().unwrap_or(0))
            .collect())
    }

    async fn latest_subjects(&self, streams: &[String]) -> Result<Vec<Option<String>>, StoreError> {
        if streams.is_empty() {
            return Ok(Vec::new());
        }
        let rows: Vec<(String, String)> = sqlx::query_as(sql::LATEST_SUBJECTS)
            .bind(streams)
            .fetch_all(&self.pool)
            .await
            .map_err(backend)?;
        let found: HashMap<String, String> = rows.into_iter().collect();
        Ok(streams.iter().map(|s| found.get(s).cloned()).collect())
    }

    async fn write_index(&self, changes: IndexChanges) -> Result<(), StoreError> {
        // One statement: atomic on its own.
        let net = changes.net();
        let mut conn = self.pool.acquire().await.map_err(backend)?;
        write::write_index(&mut conn, &net)
            .await
            .map_err(|e| match e {
                WriteError::Db(e) => backend(e),
                WriteError::Refused(e) => e,
            })
    }

    async fn clear_index(&self) -> Result<(), StoreError> {
        sqlx::query(sql::CLEAR_INDEX)
            .execute(&self.pool)
            .await
            .map_err(backend)?;
        Ok(())
    }

    async fn instance(&self, stream: &str) -> Result<Option<InstanceRow>, StoreError> {
        sqlx::query(sql::INSTANCE)
            .bind(stream)
            .fetch_optional(&self.pool)
            .await
            .map_err(backend)?
            .as_ref()
            .map(rows::instance)
            .transpose()
    }

    async fn instances_of(
        &self,
        tenant: &str,
        subject: &str,
    ) -> Result<Vec<InstanceRow>, StoreError> {
        let rows = sqlx::query(sql::INSTANCES_OF)
            .bind(tenant)
            .bind(subject)
            .fetch_all(&self.pool)
            .await
            .map_err(backend)?;
        rows.iter().map(rows::instance).collect()
    }

    async fn instances_of_many(
        &self,
        patients: &[(&str, &str)],
    ) -> Result<Vec<Vec<InstanceRow>>, StoreError> {
        let mut out = vec![Vec::new(); patients.len()];
        if patients.is_empty() {
            return Ok(out);
        }
        let (tenants, subjects): (Vec<&str>, Vec<&str>) = patients.iter().copied().unzip();
        let rows = sqlx::query(sql::INSTANCES_OF_MANY)
            .bind(tenants)
            .bind(subjects)
            .fetch_all(&self.pool)
            .await
            .map_err(backend)?;
        for row in &rows {
            let patient: i64 = rows::get(row, "patient")?;
            let slot = usize::try_from(patient - 1)
                .ok()
                .and_then(|i| out.get_mut(i))
                .ok_or_else(|| StoreError::Backend(format!("no patient {patient} asked for")))?;
            slot.push(rows::instance(row)?);
        }
        Ok(out)
    }

    async fn list_instances(&self, f: &InstanceFilter) -> Result<Vec<InstanceRow>, StoreError> {
        let rows = sqlx::query(sql::LIST_INSTANCES)
            .bind(&f.tenant)
            .bind(f.pathway_id.as_deref())
            .bind(f.status.as_deref())
            .bind(f.after_stream.as_deref())
            .bind(limit_of(f.limit))
            .fetch_all(&self.pool)
            .await
            .map_err(backend)?;
        rows.iter().map(rows::instance).collect()
    }

    async fn due_timers(
        &self,
        until: Timestamp,
        limit: usize,
        scope: &TimerScope,
    ) -> Result<Vec<TimerRow>, StoreError> {
        let (count, owned) = scope.query_parts().unzip();
        // A bound past what the log stores (`Timestamp::MAX`: every pending timer) asks
        // for every timer up to the last instant it can hold.
        let rows = sqlx::query(sql::DUE_TIMERS)
            .bind(rows::nanos_bound(until))
            .bind(count)
            .bind(owned)
            .bind(limit_of(limit))
            .fetch_all(&self.pool)
            .await
            .map_err(backend)?;
        rows.iter().map(rows::timer).collect()
    }

    async fn next_timer(&self, scope: &TimerScope) -> Result<Option<Timestamp>, StoreError> {
        let (count, owned) = scope.query_parts().unzip();
        let next: Option<i64> = sqlx::query_scalar(sql::NEXT_TIMER)
            .bind(Option::<i64>::None)
            .bind(count)
            .bind(owned)
            .fetch_one(&self.pool)
            .await
            .map_err(backend)?;
        next.map(|n| rows::from_nanos(n, "fire_at")).transpose()
    }

    async fn count_timers(&self) -> Result<u64, StoreError> {
        let n: i64 = sqlx::query_scalar(sql::COUNT_TIMERS)
            .fetch_one(&self.pool)
            .await
            .map_err(backend)?;
        rows::to_u64(n, "timer count")
    }

    async fn work_items(&self, f: &WorkFilter) -> Result<Vec<WorkItem>, StoreError> {
        let rows = sqlx::query(sql::WORK_ITEMS)
            .bind(&f.tenant)
            .bind(f.role.as_deref())
            .bind(f.kind.map(|k| k.as_str()))
            .bind(f.statuses().iter().map(|s| s.as_str()).collect::<Vec<_>>())
            .bind(f.stream.as_deref())
            .bind(
                f.after
                    .as_ref()
                    .and_then(|c| c.due_at)
                    .map(rows::nanos)
                    .transpose()?,
            )
            .bind(f.after.as_ref().map(|c| c.id.as_str()))
            .bind(limit_of(f.limit))
            .fetch_all(&self.pool)
            .await
            .map_err(backend)?;
        rows.iter().map(rows::work).collect()
    }

    async fn work_item(&self, id: &str) -> Result<Option<WorkItem>, StoreError> {
        sqlx::query(sql::WORK_ITEM)
            .bind(id)
            .fetch_optional(&self.pool)
            .await
            .map_err(backend)?
            .as_ref()
            .map(rows::work)
            .transpose()
    }

    async fn snapshot(&self, stream: &str) -> Result<Option<Snapshot>, StoreError> {
        sqlx::query(sql::SNAPSHOT)
            .bind(stream)
            .fetch_optional(&self.pool)
            .await
            .map_err(backend)?
            .as_ref()
            .map(rows::snapshot)
            .transpose()
    }

    async fn dead_letter(&self, letter: DeadLetter) -> Result<u64, StoreError> {
        let id: i64 = sqlx::query_scalar(sql::DEAD_LETTER)
            .bind(nanos(recorded_at())?)
            .bind(&letter.source)
            .bind(letter.tenant.as_deref())
            .bind(&letter.reason)
            .bind(&letter.payload)
            .fetch_one(&self.pool)
            .await
            .map_err(backend)?;
        rows::to_u64(id, "dead letter id")
    }

    async fn dead_letters(
        &self,
        after: u64,
        limit: usize,
    ) -> Result<Vec<StoredDeadLetter>, StoreError> {
        let rows = self
            .settled(
                sql::DEAD_LETTERS,
                sql::ANY_DEAD_LETTER_AFTER,
                after,
                usize::try_from(limit_of(limit)).unwrap_or(100),
                Some("id"),
                self.read_wait,
            )
            .await?;
        rows.iter().map(rows::dead_letter).collect()
    }

    async fn list_dead_letters(
        &self,
        f: &DeadLetterFilter,
    ) -> Result<Vec<StoredDeadLetter>, StoreError> {
        // Newest first, below the read bound (a page boundary never passes a letter that
        // commits later). A letter left out for lying above the bound is waited for, as a
        // reader by position waits ([`Self::settled`]): else the newest letter can be
        // missing from the first page for a moment. As there, the check after the
        // listing does not use the bound (a writer ending in between raises it, and a
        // bound read at the wrong instant is low for a moment): any matching letter
        // newer than the newest listed sends it round again.
        let before = f
            .before
            .map_or(i64::MAX, |b| i64::try_from(b).unwrap_or(i64::MAX));
        let mut waited = Duration::ZERO;
        let mut pause = Duration::from_micros(500);
        loop {
            let rows = sqlx::query(sql::LIST_DEAD_LETTERS)
                .bind(f.tenant.as_deref())
                .bind(f.source.as_deref())
                .bind(before)
                .bind(limit_of(f.limit))
                .fetch_all(&self.pool)
                .await
                .map_err(backend)?;
            if waited >= self.read_wait {
                return rows.iter().map(rows::dead_letter).collect();
            }
            let newest: i64 = match rows.first() {
                Some(row) => row.try_get("id").map_err(backend)?,
                None => 0,
            };
            let missed: bool = sqlx::query_scalar(sql::DEAD_LETTER_NEWER)
                .bind(f.tenant.as_deref())
                .bind(f.source.as_deref())
                .bind(newest)
                .bind(before)
                .fetch_one(&self.pool)
                .await
                .map_err(backend)?;
            if !missed {
                return rows.iter().map(rows::dead_letter).collect();
            }
            tokio::time::sleep(pause).await;
            waited += pause;
            pause = (pause * 2).min(Duration::from_millis(10));
        }
    }

    async fn dead_letter_by_id(&self, id: u64) -> Result<Option<StoredDeadLetter>, StoreError> {
        let Ok(id) = i64::try_from(id) else {
            return Ok(None);
        };
        sqlx::query(sql::DEAD_LETTER_BY_ID)
            .bind(id)
            .fetch_optional(&self.pool)
            .await
            .map_err(backend)?
            .as_ref()
            .map(rows::dead_letter)
            .transpose()
    }

    async fn checkpoint(&self, name: &str) -> Result<Option<u64>, StoreError> {
        let pos: Option<i64> = sqlx::query_scalar(sql::CHECKPOINT)
            .bind(name)
            .fetch_optional(&self.pool)
            .await
            .map_err(backend)?;
        pos.map(|p| rows::to_u64(p, "checkpoint")).transpose()
    }

    async fn save_checkpoint(&self, name: &str, position: u64) -> Result<(), StoreError> {
        sqlx::query(sql::SAVE_CHECKPOINT)
            .bind(name)
            .bind(to_i64(position, "checkpoint")?)
            .execute(&self.pool)
            .await
            .map_err(backend)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::redacted_url;

    #[test]
    fn a_shown_url_has_no_password() {
        let cases = [
            (
                "postgres://parcours:S3cret@db:5432/parcours?sslmode=verify-full",
                "postgres://parcours:<redacted>@db:5432/parcours?sslmode=verify-full",
            ),
            (
                "postgresql://db/parcours?user=parcours&password=S3cret&sslmode=require",
                "postgresql://db/parcours?user=parcours&password=<redacted>&sslmode=require",
            ),
            (
                "postgres://parcours@db/parcours",
                "postgres://parcours@db/parcours",
            ),
            (
                "postgres://u:p@ss@db?Password=x",
                "postgres://u:<redacted>@db?Password=<redacted>",
            ),
            (
                "/var/lib/parcours/parcours.db",
                "/var/lib/parcours/parcours.db",
            ),
        ];
        for (url, shown) in cases {
            assert_eq!(redacted_url(url), shown);
            assert!(!redacted_url(url).contains("S3cret"));
        }
    }
}
