//! The statements, as static strings: prepared once per connection, no SQL built from
//! data. Arrays are bound whole (`UNNEST`), one statement per table group and commit.

/// The columns of a record, in the order `rows::record` reads them.
macro_rules! record_columns {
    () => {
        "position, stream, version, id, record_type, type_version, codec, tenant, subject, \
         occurred_at, recorded_at, cause, payload"
    };
}

/// Versions of streams, no lock. One primary-key look-up per stream, whatever the
/// statistics (as `parcours_begin_commit` since migration 0008): `stream = ANY($1)`'s
/// generic plan, made on a small table, scans it whole.
pub(crate) const STREAM_VERSIONS: &str = "SELECT t.stream, t.version \
     FROM (SELECT DISTINCT stream FROM UNNEST($1::text[]) AS w(stream)) w \
     CROSS JOIN LATERAL (SELECT s.stream, s.version FROM streams s \
         WHERE s.stream = w.stream LIMIT 1) t";

/// The subject of each stream's latest record (the identity links): one probe of the
/// `(stream, version)` key per stream, backwards, whatever the statistics.
pub(crate) const LATEST_SUBJECTS: &str = "SELECT w.stream, t.subject \
     FROM (SELECT DISTINCT stream FROM UNNEST($1::text[]) AS w(stream)) w \
     CROSS JOIN LATERAL (SELECT r.subject FROM records r \
         WHERE r.stream = w.stream ORDER BY r.version DESC LIMIT 1) t";

/// Whether any of these ids is stored (one look-up of the unique key per id).
pub(crate) const ANY_STORED: &str = "SELECT EXISTS (SELECT 1 FROM UNNEST($1::text[]) AS i(id) \
     CROSS JOIN LATERAL (SELECT 1 FROM records r WHERE r.id = i.id LIMIT 1) r)";

/// Projection changes alone (`write_index`), in one call: `parcours_write_index`
/// (migrations 0009, 0012, 0014, 0015) applies each part from its column arrays (`$1` to
/// `$48`).
pub(crate) const WRITE_INDEX: &str = "SELECT parcours_write_index($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, \
     $11, $12, $13, $14, $15, $16, $17, $18, $19, $20, $21, $22, $23, $24, \
     $25, $26, $27, $28, $29, $30, $31, $32, $33, $34, $35, $36, $37, $38, \
     $39, $40, $41, $42, $43, $44, $45, $46, $47, $48)";

/// A whole commit in one call (migration 0009): the writer mark, the stream locks, the
/// duplicate and version checks, then the records, the streams' new versions and the
/// projection changes. `$1` to `$17` are the commit (`write::Plan`), `$18` to `$65` the
/// projection changes (migrations 0014, 0015).
pub(crate) const COMMIT: &str = "SELECT outcome, last_position, stream_names, stream_versions FROM parcours_commit(\
     $1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, \
     $16, $17, $18, $19, $20, $21, $22, $23, $24, $25, $26, $27, $28, $29, \
     $30, $31, $32, $33, $34, $35, $36, $37, $38, $39, $40, $41, $42, $43, \
     $44, $45, $46, $47, $48, $49, $50, $51, $52, $53, $54, $55, $56, $57, \
     $58, $59, $60, $61, $62, $63, $64, $65)";

/// [`COMMIT`] under guards (migration 0016): `$1` to `$4` the guards' locks, whether
/// each is shared, their streams and versions, then `COMMIT`'s 65 arguments (`$5` to
/// `$69`).
pub(crate) const COMMIT_GUARDED: &str = "SELECT outcome, last_position, stream_names, stream_versions FROM parcours_commit_guarded(\
     $1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, \
     $16, $17, $18, $19, $20, $21, $22, $23, $24, $25, $26, $27, $28, $29, \
     $30, $31, $32, $33, $34, $35, $36, $37, $38, $39, $40, $41, $42, $43, \
     $44, $45, $46, $47, $48, $49, $50, $51, $52, $53, $54, $55, $56, $57, \
     $58, $59, $60, $61, $62, $63, $64, $65, $66, $67, $68, $69)";

/// Empty every projection.
pub(crate) const CLEAR_INDEX: &str = "TRUNCATE instances, timers, work_items, snapshots";

/// A stream's records after a version.
pub(crate) const READ_STREAM: &str = concat!(
    "SELECT ",
    record_columns!(),
    " FROM records WHERE stream = $1 AND version > $2 ORDER BY version"
);

/// The records of the streams named from `$1` (included) to `$2` (excluded), in log
/// order: a prefix's streams, through the `(stream, version)` index (`"C"` collation).
pub(crate) const READ_STREAMS_BETWEEN: &str = concat!(
    "SELECT ",
    record_columns!(),
    " FROM records WHERE stream >= $1 AND stream < $2 ORDER BY position"
);

/// The records of the streams named from `$1` on, in log order (a prefix no name is
/// after: see `parcours_store::prefix_end`).
pub(crate) const READ_STREAMS_FROM: &str = concat!(
    "SELECT ",
    record_columns!(),
    " FROM records WHERE stream >= $1 ORDER BY position"
);

/// Records after a position that every reader may rely on (below the read bound), by
/// `parcours_read_page` (migration 0011): the primary key walked in order from the
/// position, up to the limit, whatever the statistics (a bitmap scan and a sort of the
/// whole rest of the log looked cheaper to the planner while they were stale). The bound
/// is an init plan: computed once per statement, in the caller's snapshot.
pub(crate) const READ_ALL: &str = concat!(
    "SELECT ",
    record_columns!(),
    " FROM parcours_read_page($1, $2)"
);

/// [`READ_ALL`]'s heads, by `parcours_read_heads`: no payload read (nor detoasted, nor
/// sent).
pub(crate) const READ_HEADS: &str =
    "SELECT position, stream, record_type, recorded_at FROM parcours_read_heads($1, $2)";

/// The records at these positions (read as heads first: below the read bound).
pub(crate) const READ_AT: &str = concat!(
    "SELECT ",
    record_columns!(),
    " FROM records WHERE position = ANY($1::bigint[]) ORDER BY position"
);

/// Whether a committed record lies after a position (held back or not). The highest
/// position, not `EXISTS (… position > $1)`: the generic plan of that one (prepared
/// statements switch to it) is a sequential scan from the start of the table, which
/// grew with the log — 50–85 ms per relay round at 140 000 records.
pub(crate) const ANY_RECORD_AFTER: &str =
    "SELECT coalesce((SELECT max(position) FROM records), 0) > $1";

/// The highest committed position a reader sees (one probe of the primary key).
pub(crate) const LAST_POSITION: &str = "SELECT coalesce(max(position), 0) FROM records";

pub(crate) const CONTAINS: &str = "SELECT EXISTS (SELECT 1 FROM records WHERE id = $1)";

pub(crate) const STORED_IDS: &str = "SELECT r.id \
     FROM (SELECT DISTINCT id FROM UNNEST($1::text[]) AS i(id)) i \
     CROSS JOIN LATERAL (SELECT r.id FROM records r WHERE r.id = i.id LIMIT 1) r";

/// What the stored records of these ids (`$1`) hold (`stored_events`), each asked once,
/// by the unique key whatever the statistics (as `STORED_IDS`).
pub(crate) const STORED_EVENTS: &str = "SELECT r.id, r.tenant, r.subject, r.record_type, \
     r.occurred_at FROM (SELECT DISTINCT id FROM UNNEST($1::text[]) AS i(id)) i \
     CROSS JOIN LATERAL (SELECT r.id, r.tenant, r.subject, r.record_type, r.occurred_at \
     FROM records r WHERE r.id = i.id LIMIT 1) r";

/// The stored keys of patients (`$1` tenants, `$2` subjects), each asked once. One
/// primary-key look-up per patient, whatever the statistics: a plain join's generic plan,
/// made while the table was small or never analyzed (a new database's first minutes),
/// hashed the asked patients and scanned the whole table on every group commit with a
/// new patient — 1.6–1.8 ms a call at 6 000 patients, a third of PostgreSQL's time at
/// 2 000 events/s in the benchmark. `LIMIT 1` keeps the subquery a nested loop's inner
/// side (the key is unique). In a function (migration 0017) that plans it once per
/// connection: sent as a prepared statement, it was planned at every call (for the one
/// or two patients of a call the custom plan looks cheaper), 0.09 ms of planning for
/// 0.02 ms of execution.
pub(crate) const PATIENT_KEYS: &str =
    "SELECT tenant, subject, key_id, wrapped FROM parcours_patient_keys($1::text[], $2::text[])";

pub(crate) const STREAM_VERSION: &str = "SELECT version FROM streams WHERE stream = $1";

/// Raise the position floor after a restore into a cluster with a younger transaction
/// counter (see `log_meta` in the migrations). A no-op otherwise.
pub(crate) const RAISE_POSITION_FLOOR: &str = "UPDATE log_meta \
     SET xid_offset = t.top - t.next_xid + 1 \
     FROM (SELECT greatest(coalesce((SELECT max(position) FROM records), 0), \
                           coalesce((SELECT max(id) FROM dead_letters), 0)) >> 20 AS top, \
                  pg_snapshot_xmax(pg_current_snapshot())::text::bigint AS next_xid) t \
     WHERE t.top >= t.next_xid + log_meta.xid_offset \
     RETURNING log_meta.xid_offset";

/// Settings a durable log depends on.
pub(crate) const DURABILITY_SETTINGS: &str =
    "SELECT current_setting('fsync'), current_setting('synchronous_commit')";

/// Run on every new connection: a server or role default of `synchronous_commit = off`
/// would acknowledge commits a crash can lose; the log's sessions always wait for the
/// WAL flush (a stronger setting, `remote_apply` and the like, is kept).
pub(crate) const FORCE_SYNCHRONOUS_COMMIT: &str = "SELECT CASE \
     WHEN current_setting('synchronous_commit') IN ('off', 'local') \
     THEN set_config('synchronous_commit', 'on', false) END";

pub(crate) const INSTANCE: &str = "SELECT * FROM instances WHERE stream = $1";

pub(crate) const INSTANCES_OF: &str = "SELECT * FROM instances \
     WHERE tenant = $1 AND subject = $2 ORDER BY enrolled_at, stream";

/// The instances of several patients (`$1` tenants, `$2` subjects), each row with the
/// index of its patient (`patient`, from 1), grouped by patient, oldest first.
pub(crate) const INSTANCES_OF_MANY: &str = "SELECT i.*, k.patient FROM \
     UNNEST($1::text[], $2::text[]) WITH ORDINALITY AS k(tenant, subject, patient) \
     JOIN instances i ON i.tenant = k.tenant AND i.subject = k.subject \
     ORDER BY k.patient, i.enrolled_at, i.stream";

pub(crate) const LIST_INSTANCES: &str = "SELECT * FROM instances WHERE tenant = $1 \
     AND ($2::text IS NULL OR pathway_id = $2) \
     AND ($3::text IS NULL OR status = $3) \
     AND ($4::text IS NULL OR stream > $4) \
     ORDER BY stream LIMIT $5";

/// A timer row in a `TimerScope` bound as `$2` (partition count, `NULL` for every
/// timer) and `$3` (owned partitions): the partition computed from the stored hash
/// halves as `parcours_store::partition_of` does.
macro_rules! in_scope {
    () => {
        "($2::bigint IS NULL OR ((hash_hi % $2) * (4294967296 % $2) + hash_lo % $2) % $2 \
         = ANY($3::bigint[]))"
    };
}

pub(crate) const DUE_TIMERS: &str = concat!(
    "SELECT * FROM timers WHERE fire_at <= $1 AND ",
    in_scope!(),
    " ORDER BY fire_at, id LIMIT $4"
);

pub(crate) const NEXT_TIMER: &str = concat!(
    "SELECT min(fire_at) FROM timers WHERE $1::bigint IS NULL AND ",
    in_scope!()
);

pub(crate) const COUNT_TIMERS: &str = "SELECT count(*) FROM timers";

/// Work items of a tenant by role, kind, statuses and instance, after a cursor
/// (`$6` due time, `$7` id: by due time, those without one last, then by id).
pub(crate) const WORK_ITEMS: &str = "SELECT * FROM work_items WHERE tenant = $1 \
     AND ($2::text IS NULL OR role = $2 OR escalated_to = $2) \
     AND ($3::text IS NULL OR kind = $3) \
     AND status = ANY($4::text[]) \
     AND ($5::text IS NULL OR stream = $5) \
     AND ($7::text IS NULL \
          OR ($6::bigint IS NULL AND due_at IS NULL AND id > $7) \
          OR ($6::bigint IS NOT NULL \
              AND (due_at IS NULL OR due_at > $6 OR (due_at = $6 AND id > $7)))) \
     ORDER BY due_at NULLS LAST, id LIMIT $8";

pub(crate) const WORK_ITEM: &str = "SELECT * FROM work_items WHERE id = $1";

pub(crate) const SNAPSHOT: &str = "SELECT * FROM snapshots WHERE stream = $1";

/// One dead letter, numbered like a record (its own transaction).
pub(crate) const DEAD_LETTER: &str = "INSERT INTO dead_letters \
     (id, received_at, source, tenant, reason, payload) \
     VALUES (parcours_begin_write(), $1, $2, $3, $4, $5) RETURNING id";

pub(crate) const DEAD_LETTERS: &str = "SELECT * FROM dead_letters \
     WHERE id > $1 AND id < (SELECT parcours_read_bound()) ORDER BY id LIMIT $2";

/// Dead letters newest first, of a tenant (`$1`), a source or front (`$2`: `nats` takes
/// `nats:<subject>`), below an id (`$3`), and below every letter still being written.
pub(crate) const LIST_DEAD_LETTERS: &str = "SELECT * FROM dead_letters \
     WHERE id < LEAST($3::bigint, (SELECT parcours_read_bound())) \
     AND ($1::text IS NULL OR tenant = $1) \
     AND ($2::text IS NULL OR source = $2 OR left(source, length($2) + 1) = $2 || ':') \
     ORDER BY id DESC LIMIT $4";

/// Whether a committed dead letter the list above would show is newer than `$3`, the
/// newest it showed (or 0: it showed none), and older than `$4` (its `before`): one left
/// out because it lay above the read bound — held back by a writer in flight, or by a
/// bound computed low for a moment (the snapshot and the lock table are read at two
/// instants) — or committed since. Not by the bound itself, as [`ANY_RECORD_AFTER`].
pub(crate) const DEAD_LETTER_NEWER: &str = "SELECT EXISTS (SELECT 1 FROM dead_letters \
     WHERE id > $3::bigint AND id < $4::bigint \
     AND ($1::text IS NULL OR tenant = $1) \
     AND ($2::text IS NULL OR source = $2 OR left(source, length($2) + 1) = $2 || ':'))";

pub(crate) const DEAD_LETTER_BY_ID: &str = "SELECT * FROM dead_letters WHERE id = $1";

/// Whether a dead letter lies after an id (see [`ANY_RECORD_AFTER`]).
pub(crate) const ANY_DEAD_LETTER_AFTER: &str =
    "SELECT coalesce((SELECT max(id) FROM dead_letters), 0) > $1";

pub(crate) const CHECKPOINT: &str = "SELECT position FROM checkpoints WHERE name = $1";

pub(crate) const SAVE_CHECKPOINT: &str = "INSERT INTO checkpoints (name, position) \
     VALUES ($1, $2) ON CONFLICT (name) DO UPDATE SET position = excluded.position";
