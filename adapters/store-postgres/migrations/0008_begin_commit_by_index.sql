-- A commit's first statement looks each of its streams and record ids up by its index,
-- whatever the statistics.
--
-- parcours_begin_commit() read the asked streams with `stream = ANY(wanted)` and checked
-- the commit's ids with `EXISTS (… id = ANY(ids))`. PL/pgSQL caches each statement's
-- plan per connection; once that is a generic plan (after a few calls, when it costs no
-- more than the custom ones) it is kept until the next ANALYZE of the table. Made while
-- the tables were small — a new database's first minute, or statistics lagging a bulk
-- load — it scans `streams` and `records` whole, on every commit, while the log grows:
-- with generic plans forced, PostgreSQL used both cores at 200 events/s (a quarter of
-- one otherwise). One index probe per asked stream and per id (a unique key, LIMIT 1)
-- is the plan whatever the planner knows. The streams are still locked in name order:
-- the caller passes them sorted (byte order, the column's "C" collation), and a lateral
-- join takes them in the array's order.
CREATE OR REPLACE FUNCTION parcours_begin_commit(
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
      FROM unnest(wanted) AS w(stream)
      CROSS JOIN LATERAL (SELECT t.stream, t.version FROM streams t
                          WHERE t.stream = w.stream LIMIT 1 FOR UPDATE) s;
    duplicate := EXISTS (SELECT 1 FROM unnest(ids) AS i(id)
                         CROSS JOIN LATERAL (SELECT 1 FROM records r
                                             WHERE r.id = i.id LIMIT 1) r);
END $$;
