-- The read bound skipped a record now and then under concurrent writers (found by the
-- conformance test `concurrent_commits_are_all_read_once` run several times at once).
--
-- parcours_read_bound() matched a transaction's id lock with its writer mark by
-- pg_locks.virtualtransaction. That column is not part of the lock table's consistent
-- picture: each row's is read from the holding backend's current local transaction id
-- while the rows are gathered. A writer committing during the read clears that id
-- (ProcArrayEndTransaction) before it releases its locks, so its id lock could show its
-- virtual transaction and its mark "backend/0", or the reverse. The two did not match,
-- the writer was taken for a transaction that never writes the log, the bound passed
-- it, and the reading statement's snapshot (taken before that commit) did not see its
-- records: the reader returned the records above it and never came back for them.
-- (Seen with a diagnostic reader: the skipped transaction's id lock at "66/2462", its
-- mark at "66/0", same pid.)
--
-- Now the mark is matched by the holding backend's pid as well, which does not change
-- while the backend holds locks. A backend holds the id lock of at most one transaction
-- and, within one consistent read of the lock table, a mark only of that transaction.
-- (Prepared transactions' locks have no pid: their virtual transaction still matches.)
CREATE OR REPLACE FUNCTION parcours_read_bound() RETURNS bigint
LANGUAGE sql STABLE AS $$
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
    FROM snap, log_meta m
$$;
