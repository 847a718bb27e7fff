-- Guards (`parcours_store::Guard`): a commit may name streams it does not write that
-- must be at a version for it to be written. The runtime of a log shared by several
-- engines (scale-out) guards a patient key's identity stream (no link, no retirement)
-- from the commits of its events, and the key's inbound stream (the version the engine
-- loaded) from the commit of a link or merge that moves it, so that the two conflict:
-- whichever commits second is refused and decided again with the link known.
--
-- A guard is sound only if it and the concurrent writer of the guarded stream
-- serialize: every commit with guards first takes transaction-level advisory locks for
-- its guards' lock names, and only then reads the guarded streams' versions — a
-- statement that starts after a lock was granted sees what the commit that held it
-- wrote. Lock names are hashed into 128 locks (one bigint key each, above 2^38: none of
-- the two-key locks the writer mark and the leases take), so that a commit holds at
-- most 128 of the server's lock slots (`max_locks_per_transaction`) however many
-- patients it holds; a lock is taken shared when every guard of the commit under it is
-- (an event's: events do not wait for each other, nor for an unrelated key sharing the
-- lock), exclusive otherwise (a link's, a merge's, rare: it waits for the commits in
-- flight holding its lock, then they wait for it); in lock order (no deadlock between
-- guarded commits). Then the commit itself, `parcours_commit` (migration 0015's,
-- unchanged, which a commit without guards keeps calling directly: it pays nothing for
-- them).
--
-- A failed guard answers `guard`, the failing streams and their stored versions, unless
-- an id of the commit is stored already (idempotency first: `duplicate`).

CREATE FUNCTION parcours_commit_guarded(
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
    SELECT c.outcome, c.last_position, c.stream_names, c.stream_versions
      INTO outcome, last_position, stream_names, stream_versions
      FROM parcours_commit(wanted, expected,
        r_offset, r_stream, r_version, r_id, r_type, r_type_version, r_codec, r_tenant,
        r_subject, r_occurred, r_recorded, r_cause, r_payload, head_stream, head_version,
        timers_removed, work_removed,
        i_stream, i_tenant, i_subject, i_pathway, i_pathway_version, i_status, i_closed,
        i_states, i_cycle, i_enrolled, i_updated, i_version,
        t_id, t_stream, t_tenant, t_subject, t_fire, t_hash_hi, t_hash_lo,
        w_id, w_kind, w_stream, w_tenant, w_subject, w_pathway, w_code, w_role, w_title,
        w_status, w_priority, w_due, w_opened, w_opened_by, w_escalated, w_closed,
        st_id, st_status, st_escalated, st_priority, st_closed,
        s_stream, s_version, s_codec, s_type_version, s_payload, t_due) c;
END $$;
