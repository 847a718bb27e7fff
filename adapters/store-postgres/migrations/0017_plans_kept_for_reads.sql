-- Two reads made many times a second plan their statement once per connection instead
-- of at every call. At 2 000 events/s in the end-to-end benchmark (30 s phases, three
-- alternating pairs, pg_stat_statements): the relay's `read_heads` 0.58–0.72 s of
-- PostgreSQL's time a phase → 0.27–0.30 s, the vault's key read 0.47–0.63 s → 0.40–0.43 s.
--
-- parcours_read_bound() (every page of the log, the relay's rounds, the dead letters'
-- listings): a SQL function whose body (a `WITH … MATERIALIZED`, never inlined) is
-- planned at each call — 0.26 ms of planning for 0.02 ms of execution, 1 111 calls in a
-- 30 s phase at 2 000 events/s. It is now PL/pgSQL, which keeps a statement's plan per
-- connection (a statement without parameters keeps its generic plan). Same statement,
-- same result: a STABLE PL/pgSQL function runs its statements in the calling
-- statement's snapshot, as the SQL function did; `pg_is_in_recovery()`, the database's
-- oid and the lock table are still read at each call.
--
-- parcours_patient_keys(tenants, subjects): the vault's read of a group's patient keys
-- (one primary-key look-up per patient, `LIMIT 1` in a lateral join, as the statement
-- the engine sent, sql::PATIENT_KEYS). As a prepared statement it was planned at every
-- call (0.09 ms of planning for 0.02 ms of execution, 5 209 calls in the phase): for
-- the one or two patients of a call, the custom plan looks cheaper than the generic one
-- and PostgreSQL keeps making it. In a function with migration 0010's settings the
-- plan is made once per connection and reaches each key by the index whatever the
-- statistics. The engine's previous release keeps sending its statement.

CREATE OR REPLACE FUNCTION parcours_read_bound() RETURNS bigint
LANGUAGE plpgsql STABLE AS $$
BEGIN
    RETURN (
    WITH snap AS (
        SELECT pg_current_snapshot() AS s
    ),
    locks AS MATERIALIZED (
        SELECT locktype, mode, granted, database, classid, objid, objsubid,
               virtualtransaction, pid, transactionid
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
                AND (w.pid = t.pid OR w.virtualtransaction = t.virtualtransaction))
    )
    SELECT (least(
               CASE WHEN pg_is_in_recovery()
                    THEN pg_snapshot_xmin(snap.s)
                    ELSE (SELECT min(x) FROM pg_snapshot_xip(snap.s) AS x
                          WHERE x::xid NOT IN (SELECT transactionid FROM non_writers))
               END,
               pg_snapshot_xmax(snap.s))::text::bigint
            + m.xid_offset) << 20
    FROM snap, log_meta m);
END $$;

CREATE FUNCTION parcours_patient_keys(tenants text[], subjects text[])
RETURNS TABLE (tenant text, subject text, key_id text, wrapped bytea)
LANGUAGE plpgsql STABLE
SET plan_cache_mode = force_generic_plan SET enable_seqscan = off SET jit = off
AS $$
BEGIN
    RETURN QUERY
        SELECT a.tenant, a.subject, k.key_id, k.wrapped
        FROM (SELECT DISTINCT * FROM unnest(tenants, subjects) AS a(tenant, subject)) a
        CROSS JOIN LATERAL (SELECT p.key_id, p.wrapped FROM patient_keys p
                            WHERE p.tenant = a.tenant AND p.subject = a.subject
                            LIMIT 1) k;
END $$;
