-- A page of the log (`read_all`, `read_heads`) walks the primary key from its position,
-- whatever the statistics say.
--
-- The page's statement was `… WHERE position > $1 AND position < (SELECT
-- parcours_read_bound()) ORDER BY position LIMIT $2`. The planner cannot know the bound
-- (an init plan), so it estimated the page's rows at 0.5 % of the table or, with
-- statistics taken while the log was small, at about one histogram bucket: fewer than the
-- page's limit on a log of less than some 800 000 records. Then a bitmap scan of every
-- record after the position, and a sort of them all, looked cheaper than the index walk:
-- with statistics a burst had left behind (taken on 3 000 records, the log at 230 000),
-- each page of 4 096 records read the whole rest of the log and sorted it on disk — 390 MB
-- of temporary files and 0.7 s a page, where the index walk takes 3–8 ms. The indicators'
-- fold at a `/metrics` scrape (pages from its last position on), replay and the relay
-- catching up after a backlog read the log this way.
--
-- The two functions run the same statements with every other way of reading `records`
-- switched off (a sort, a bitmap or sequential scan), so the only plan left is the primary
-- key in order, stopping at the limit. Functions rather than settings of the engine's
-- connections: the log's other readers (a prefix's streams in log order) do need a sort.
-- The rows come back through the function's result store: `work_mem` is raised inside so
-- that a page stays in memory. STABLE: the statement runs in the caller's snapshot, the one
-- the bound is computed for, as the init plan did.

CREATE OR REPLACE FUNCTION parcours_read_page(after bigint, lim bigint)
RETURNS SETOF records
LANGUAGE plpgsql STABLE
SET enable_sort = off SET enable_bitmapscan = off SET enable_seqscan = off
SET enable_indexscan = on SET jit = off SET work_mem = '64MB'
AS $$
BEGIN
    RETURN QUERY
        SELECT * FROM records r
        WHERE r.position > after AND r.position < (SELECT parcours_read_bound())
        ORDER BY r.position
        LIMIT lim;
END
$$;

CREATE OR REPLACE FUNCTION parcours_read_heads(after bigint, lim bigint)
RETURNS TABLE ("position" bigint, stream text, record_type text, recorded_at bigint)
LANGUAGE plpgsql STABLE
SET enable_sort = off SET enable_bitmapscan = off SET enable_seqscan = off
SET enable_indexscan = on SET jit = off SET work_mem = '64MB'
AS $$
BEGIN
    RETURN QUERY
        SELECT r.position, r.stream, r.record_type, r.recorded_at FROM records r
        WHERE r.position > after AND r.position < (SELECT parcours_read_bound())
        ORDER BY r.position
        LIMIT lim;
END
$$;
