-- The event log: inbound events and instance events, one row each.
--
-- Positions are gap-safe without serialising writers (see the crate docs, "Positions"):
-- every transaction that appends calls parcours_begin_write() before any other write;
-- it takes a shared advisory lock marking it as a log writer, and only then gets its
-- transaction id. A record's position is ((transaction id + xid_offset) << 20) + n, so
-- position order is transaction-id order, and parcours_read_bound() tells readers below
-- which position every writer has finished.
--
-- Instants are integer nanoseconds since the Unix epoch (UTC): exact, and sortable.
-- parcours_ts() shows them as timestamptz (microseconds) for people querying by hand.

-- One row. xid_offset is raised at connect when the log was restored into a cluster
-- whose transaction counter is behind the highest stored position (a logical restore),
-- so that new positions stay above every stored one.
CREATE TABLE log_meta (
    singleton  boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    xid_offset bigint  NOT NULL DEFAULT 0 CHECK (xid_offset >= 0)
);
INSERT INTO log_meta DEFAULT VALUES;

CREATE TABLE records (
    position     bigint   PRIMARY KEY,
    stream       text     COLLATE "C" NOT NULL,
    version      bigint   NOT NULL CHECK (version > 0),
    id           text     COLLATE "C" NOT NULL UNIQUE,
    record_type  text     COLLATE "C" NOT NULL,
    type_version integer  NOT NULL,
    codec        smallint NOT NULL,
    tenant       text     COLLATE "C" NOT NULL,
    subject      text     COLLATE "C" NOT NULL,
    occurred_at  bigint   NOT NULL,
    recorded_at  bigint   NOT NULL,
    cause        text     COLLATE "C",
    payload      bytea    NOT NULL,
    UNIQUE (stream, version)
);
CREATE INDEX records_tenant_subject ON records (tenant, subject);

-- The current version of every stream (optimistic concurrency; writers of one stream
-- queue on its row).
CREATE TABLE streams (
    stream  text   COLLATE "C" PRIMARY KEY,
    version bigint NOT NULL
);

-- Named readers' positions (the outbox relay, projections).
CREATE TABLE checkpoints (
    name     text   COLLATE "C" PRIMARY KEY,
    position bigint NOT NULL
);

-- What could not be processed, with the reason (kept, never dropped). Ids are numbered
-- like positions, so a reader paging by id never skips a late commit either.
CREATE TABLE dead_letters (
    id          bigint PRIMARY KEY,
    received_at bigint NOT NULL,
    source      text   COLLATE "C" NOT NULL,
    tenant      text   COLLATE "C",
    reason      text   NOT NULL,
    payload     bytea  NOT NULL
);

-- Mark the current transaction as a log writer and return the next free position of
-- its range. Must come before the transaction's first write: a transaction that
-- already has an id when it becomes a writer could be in flight, unmarked, while a
-- reader decides it is not a writer.
CREATE FUNCTION parcours_begin_write() RETURNS bigint
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    base bigint;
    used bigint;
BEGIN
    IF current_setting('parcours.writer', true) IS DISTINCT FROM 'on' THEN
        IF pg_current_xact_id_if_assigned() IS NOT NULL THEN
            RAISE EXCEPTION 'parcours: a transaction must append to the log before its first other write'
                USING ERRCODE = '55000';
        END IF;
        PERFORM pg_advisory_xact_lock_shared(1885434467, 1);
        PERFORM set_config('parcours.writer', 'on', true);
    END IF;
    SELECT pg_current_xact_id()::text::bigint + xid_offset INTO base FROM log_meta;
    IF base IS NULL OR base >= (1::bigint << 43) THEN
        RAISE EXCEPTION 'parcours: transaction id % is beyond the position space', base
            USING ERRCODE = '54000';
    END IF;
    base := base << 20;
    SELECT max(position) + 1 INTO used FROM records
        WHERE position >= base AND position < base + (1::bigint << 20);
    RETURN coalesce(used, base);
END $$;

-- The start of an append, in one round trip: the writer mark (when there are records),
-- the locks on the commit's existing streams (sorted: commits sharing streams queue
-- instead of deadlocking) with their versions, and whether an id is stored already.
-- Each statement of a VOLATILE function takes a new snapshot (READ COMMITTED): the
-- duplicate check, after the locks, sees a commit stored by a writer waited for.
CREATE FUNCTION parcours_begin_commit(
    ids text[], wanted text[],
    OUT next_position bigint, OUT duplicate boolean,
    OUT stream_names text[], OUT stream_versions bigint[])
LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    IF cardinality(ids) > 0 THEN
        next_position := parcours_begin_write();
    END IF;
    SELECT coalesce(array_agg(s.stream ORDER BY s.stream), '{}'),
           coalesce(array_agg(s.version ORDER BY s.stream), '{}')
      INTO stream_names, stream_versions
      FROM (SELECT t.stream, t.version FROM streams t
            WHERE t.stream = ANY(wanted) ORDER BY t.stream FOR UPDATE) s;
    duplicate := EXISTS (SELECT 1 FROM records r WHERE r.id = ANY(ids));
END $$;

-- The position below which every record a reader can see is final: every transaction
-- that could still add a record below it has ended. Uses the calling statement's
-- snapshot (a STABLE function takes no snapshot of its own).
--
-- In flight at the snapshot = its xip list. Of those, a transaction is known not to
-- write the log when, in one consistent read of the lock table, it still holds its own
-- transaction id lock and not the writer lock of this database; it cannot become a
-- writer later (parcours_begin_write refuses a transaction that already has an id).
-- Every other in-flight transaction holds the bound back. On a standby the lock table
-- does not show the primary's transactions: the snapshot's xmin is used instead.
CREATE FUNCTION parcours_read_bound() RETURNS bigint
LANGUAGE sql STABLE AS $$
    WITH snap AS (
        SELECT pg_current_snapshot() AS s
    ),
    locks AS MATERIALIZED (
        SELECT locktype, mode, granted, database, classid, objid, objsubid,
               virtualtransaction, transactionid
        FROM pg_locks
    ),
    non_writers AS (
        SELECT t.transactionid FROM locks t
        WHERE t.locktype = 'transactionid' AND t.mode = 'ExclusiveLock' AND t.granted
          AND NOT EXISTS (
              SELECT 1 FROM locks w
              WHERE w.locktype = 'advisory'
                AND w.database = (SELECT oid FROM pg_database WHERE datname = current_database())
                AND w.classid = 1885434467 AND w.objid = 1 AND w.objsubid = 2
                AND w.virtualtransaction = t.virtualtransaction)
    )
    SELECT (least(
               CASE WHEN pg_is_in_recovery()
                    THEN pg_snapshot_xmin(snap.s)
                    ELSE (SELECT min(x) FROM pg_snapshot_xip(snap.s) AS x
                          WHERE x::xid NOT IN (SELECT transactionid FROM non_writers))
               END,
               pg_snapshot_xmax(snap.s))::text::bigint
            + m.xid_offset) << 20
    FROM snap, log_meta m
$$;

-- Only writers append. Per statement for records (appended after a separate
-- parcours_begin_write() call); per row for dead letters, whose single INSERT calls it
-- in its VALUES (a statement trigger would run before that).
CREATE FUNCTION parcours_check_writer() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF current_setting('parcours.writer', true) IS DISTINCT FROM 'on' THEN
        RAISE EXCEPTION 'parcours: % is appended to only after parcours_begin_write()', TG_TABLE_NAME
            USING ERRCODE = '55000';
    END IF;
    IF TG_LEVEL = 'ROW' THEN
        RETURN NEW;
    END IF;
    RETURN NULL;
END $$;
CREATE TRIGGER records_writer BEFORE INSERT ON records
    FOR EACH STATEMENT EXECUTE FUNCTION parcours_check_writer();
CREATE TRIGGER dead_letters_writer BEFORE INSERT ON dead_letters
    FOR EACH ROW EXECUTE FUNCTION parcours_check_writer();

-- The log is the legal record: nothing in it is changed or removed. (An erasure ordered
-- by law is done by an administrator who disables these triggers, deliberately.)
-- log_meta's row is kept too: without it nothing is appended or read.
CREATE FUNCTION parcours_refuse() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'parcours: % on % refused: the log is the legal record', TG_OP, TG_TABLE_NAME
        USING ERRCODE = '55000';
END $$;
CREATE TRIGGER records_append_only BEFORE UPDATE OR DELETE OR TRUNCATE ON records
    FOR EACH STATEMENT EXECUTE FUNCTION parcours_refuse();
CREATE TRIGGER log_meta_kept BEFORE DELETE OR TRUNCATE ON log_meta
    FOR EACH STATEMENT EXECUTE FUNCTION parcours_refuse();

-- For people and reports: an instant as timestamptz (microseconds, exact integer maths).
CREATE FUNCTION parcours_ts(nanos bigint) RETURNS timestamptz
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $$
    SELECT timestamptz 'epoch' + (nanos / 1000) * interval '1 microsecond'
$$;

-- A JSON payload as jsonb, NULL for another codec or bytes jsonb does not take (invalid
-- UTF-8, \u0000): never fails, so it is safe in views and expression indexes.
CREATE FUNCTION parcours_payload_json(codec smallint, payload bytea) RETURNS jsonb
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE AS $$
BEGIN
    IF codec IS DISTINCT FROM 1 THEN
        RETURN NULL;
    END IF;
    RETURN convert_from(payload, 'UTF8')::jsonb;
EXCEPTION WHEN others THEN
    RETURN NULL;
END $$;

-- The log as people query it: JSON payloads as jsonb (computed when read; the stored
-- bytes stay the record), instants as timestamptz.
CREATE VIEW records_json AS
SELECT position, stream, version, id, record_type, type_version, codec, tenant, subject,
       parcours_ts(occurred_at) AS occurred_at, parcours_ts(recorded_at) AS recorded_at,
       cause, parcours_payload_json(codec, payload) AS body
FROM records;
