-- A guarded commit calls the commit as an expression, not as a query of its own.
--
-- parcours_commit_guarded() (migration 0016, the commit of a log several engines share:
-- every commit of the end-to-end benchmark) ran parcours_commit() as
-- `SELECT … INTO … FROM parcours_commit(…)`: a statement with 65 parameters, a function
-- scan, its composite result through a tuplestore. Assigned as a PL/pgSQL expression
-- (`c := parcours_commit(…)`, then its four fields), the call is evaluated directly, as
-- parcours_commit() already calls parcours_begin_write() and parcours_write_index().
-- pgbench on a private cluster, one connection, a typical guarded commit at 2 000
-- events/s (7 records of 1.5 KB on 5 streams, 3 guards, 3 instances, 2 timers written and
-- 2 removed, a work item opened and one closed), the backend's CPU a call: the query-form
-- call was ~0.17 ms of 1.24 ms (−14 % with every nested call inlined, 36 of 37 pairs
-- lower); the nested calls made as expressions cost nothing measurable. This change
-- alone, on the shared server: a guarded commit of 7 records of 1.5 KB 0.83 → 0.75 ms
-- (−10 %, six pairs), of 2 records 0.62 → 0.58 ms: the query-form call's cost grows with
-- its arguments (benches/README.md, "A commit as one PL/pgSQL function").
--
-- Replaced, not added: same signature, same statements in the same order, same
-- outcomes and errors, so an engine of the previous release, which calls it during a
-- rolling upgrade, commits exactly as before (and pays less). Its body is 0016's but for
-- the call; the settings of migration 0010, in the definition.

CREATE OR REPLACE FUNCTION parcours_commit_guarded(
    g_lock text[], g_shared boolean[], g_stream text[], g_version bigint[],
    wanted text[], expected bigint[],
    r_offset bigint[], r_stream text[], r_version bigint[], r_id text[], r_type text[],
    r_type_version integer[], r_codec smallint[], r_tenant text[], r_subject text[],
    r_occurred bigint[], r_recorded bigint, r_cause text[], r_payload bytea[],
    head_stream text[], head_version bigint[],
    timers_removed text[], work_removed text[],
    i_stream text[], i_tenant text[], i_subject text[], i_pathway text[],
    i_pathway_version bigint[], i_status text[], i_closed text[], i_states text[],
    i_cycle bigint[], i_enrolled bigint[], i_updated bigint[], i_version bigint[],
    t_id text[], t_stream text[], t_tenant text[], t_subject text[], t_fire bigint[],
    t_hash_hi bigint[], t_hash_lo bigint[],
    w_id text[], w_kind text[], w_stream text[], w_tenant text[], w_subject text[],
    w_pathway text[], w_code text[], w_role text[], w_title text[], w_status text[],
    w_priority text[], w_due bigint[], w_opened bigint[], w_opened_by text[],
    w_escalated text[], w_closed bigint[],
    st_id text[], st_status text[], st_escalated text[], st_priority text[],
    st_closed bigint[],
    s_stream text[], s_version bigint[], s_codec smallint[], s_type_version integer[],
    s_payload bytea[], t_due bigint[],
    OUT outcome text, OUT last_position bigint,
    OUT stream_names text[], OUT stream_versions bigint[])
LANGUAGE plpgsql VOLATILE
SET plan_cache_mode = force_generic_plan SET enable_seqscan = off SET jit = off
AS $$
DECLARE
    h bigint;
    sh boolean;
    c record;
BEGIN
    FOR h, sh IN SELECT (1885434467::bigint << 8) + (hashtextextended(g.l, 0) & 127),
                        bool_and(g.sh)
                   FROM unnest(g_lock, g_shared) AS g(l, sh)
                  GROUP BY 1 ORDER BY 1 LOOP
        IF sh THEN
            PERFORM pg_advisory_xact_lock_shared(h);
        ELSE
            PERFORM pg_advisory_xact_lock(h);
        END IF;
    END LOOP;
    SELECT coalesce(array_agg(g.stream ORDER BY g.stream), '{}'),
           coalesce(array_agg(coalesce(s.version, 0) ORDER BY g.stream), '{}')
      INTO stream_names, stream_versions
      FROM unnest(g_stream, g_version) AS g(stream, version)
      LEFT JOIN LATERAL (SELECT t.version FROM streams t
                         WHERE t.stream = g.stream LIMIT 1) s ON true
     WHERE coalesce(s.version, 0) <> g.version;
    IF cardinality(stream_names) > 0 THEN
        IF EXISTS (SELECT 1 FROM unnest(r_id) AS i(id)
                   CROSS JOIN LATERAL (SELECT 1 FROM records r
                                       WHERE r.id = i.id LIMIT 1) r) THEN
            outcome := 'duplicate';
        ELSE
            outcome := 'guard';
        END IF;
        RETURN;
    END IF;
    c := parcours_commit(wanted, expected,
        r_offset, r_stream, r_version, r_id, r_type, r_type_version, r_codec, r_tenant,
        r_subject, r_occurred, r_recorded, r_cause, r_payload, head_stream, head_version,
        timers_removed, work_removed,
        i_stream, i_tenant, i_subject, i_pathway, i_pathway_version, i_status, i_closed,
        i_states, i_cycle, i_enrolled, i_updated, i_version,
        t_id, t_stream, t_tenant, t_subject, t_fire, t_hash_hi, t_hash_lo,
        w_id, w_kind, w_stream, w_tenant, w_subject, w_pathway, w_code, w_role, w_title,
        w_status, w_priority, w_due, w_opened, w_opened_by, w_escalated, w_closed,
        st_id, st_status, st_escalated, st_priority, st_closed,
        s_stream, s_version, s_codec, s_type_version, s_payload, t_due);
    outcome := c.outcome;
    last_position := c.last_position;
    stream_names := c.stream_names;
    stream_versions := c.stream_versions;
END $$;
