-- A timer already due when the commit that wrote its row was recorded (a backdated
-- event's deadline) fires no sooner than that commit's recorded_at + the engine's
-- catch-up grace (`parcours serve --timer-catch-up`). `fire_at` stays the indexed
-- column the timer loop's queries read (`timers_due (fire_at, id)`, unchanged): when
-- the row fires, its due instant or the end of its grace. `due_at` keeps the due instant
-- (the clinical time of its `timer.fired`) when the grace made them differ, NULL
-- otherwise. Rows written before have none; the engine's next start rebuilds the
-- projections from the log anyway (its mark `projections-v7`).
ALTER TABLE timers ADD COLUMN due_at bigint;

-- The commit's functions take the column (`t_due`, last): new overloads, the previous
-- ones stay, so that an engine of the previous release still commits while a rolling
-- upgrade replaces it (its rows have no grace). They are 0014's (`closed_at`) with
-- `t_due`; the settings of migration 0010, in the definitions.

CREATE FUNCTION parcours_write_index(
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
    s_payload bytea[], t_due bigint[])
RETURNS void LANGUAGE plpgsql VOLATILE
SET plan_cache_mode = force_generic_plan SET enable_seqscan = off SET jit = off
AS $$
BEGIN
    IF cardinality(timers_removed) > 0 THEN
        DELETE FROM timers WHERE id = ANY(timers_removed);
    END IF;
    IF cardinality(work_removed) > 0 THEN
        DELETE FROM work_items WHERE id = ANY(work_removed);
    END IF;
    IF cardinality(i_stream) > 0 THEN
        INSERT INTO instances (stream, tenant, subject, pathway_id, pathway_version,
            status, closed_reason, states, cycle, enrolled_at, updated_at, version)
        SELECT * FROM unnest(i_stream, i_tenant, i_subject, i_pathway, i_pathway_version,
            i_status, i_closed, i_states, i_cycle, i_enrolled, i_updated, i_version)
        ON CONFLICT (stream) DO UPDATE SET tenant = excluded.tenant,
            subject = excluded.subject, pathway_id = excluded.pathway_id,
            pathway_version = excluded.pathway_version, status = excluded.status,
            closed_reason = excluded.closed_reason, states = excluded.states,
            cycle = excluded.cycle, enrolled_at = excluded.enrolled_at,
            updated_at = excluded.updated_at, version = excluded.version;
    END IF;
    IF cardinality(t_id) > 0 THEN
        INSERT INTO timers (id, stream, tenant, subject, fire_at, hash_hi, hash_lo,
            due_at)
        SELECT * FROM unnest(t_id, t_stream, t_tenant, t_subject, t_fire, t_hash_hi,
            t_hash_lo, t_due)
        ON CONFLICT (id) DO UPDATE SET stream = excluded.stream,
            tenant = excluded.tenant, subject = excluded.subject,
            fire_at = excluded.fire_at, hash_hi = excluded.hash_hi,
            hash_lo = excluded.hash_lo, due_at = excluded.due_at;
    END IF;
    IF cardinality(w_id) > 0 THEN
        INSERT INTO work_items (id, kind, stream, tenant, subject, pathway_id, code,
            role, title, status, priority, due_at, opened_at, opened_by, escalated_to,
            closed_at)
        SELECT * FROM unnest(w_id, w_kind, w_stream, w_tenant, w_subject, w_pathway,
            w_code, w_role, w_title, w_status, w_priority, w_due, w_opened, w_opened_by,
            w_escalated, w_closed)
        ON CONFLICT (id) DO UPDATE SET kind = excluded.kind, stream = excluded.stream,
            tenant = excluded.tenant, subject = excluded.subject,
            pathway_id = excluded.pathway_id, code = excluded.code,
            role = excluded.role, title = excluded.title, status = excluded.status,
            priority = excluded.priority, due_at = excluded.due_at,
            opened_at = excluded.opened_at, opened_by = excluded.opened_by,
            escalated_to = excluded.escalated_to, closed_at = excluded.closed_at;
    END IF;
    IF cardinality(st_id) > 0 THEN
        FOR i IN 1 .. cardinality(st_id) LOOP
            UPDATE work_items SET status = st_status[i],
                escalated_to = coalesce(st_escalated[i], escalated_to),
                priority = coalesce(st_priority[i], priority),
                closed_at = coalesce(st_closed[i], closed_at)
            WHERE id = st_id[i];
        END LOOP;
    END IF;
    IF cardinality(s_stream) > 0 THEN
        INSERT INTO snapshots (stream, version, codec, type_version, payload)
        SELECT * FROM unnest(s_stream, s_version, s_codec, s_type_version, s_payload)
        ON CONFLICT (stream) DO UPDATE SET version = excluded.version,
            codec = excluded.codec, type_version = excluded.type_version,
            payload = excluded.payload;
    END IF;
END $$;

CREATE FUNCTION parcours_commit(
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
    n bigint := cardinality(r_id);
    base bigint;
BEGIN
    IF n > 0 THEN
        base := parcours_begin_write();
    END IF;
    SELECT coalesce(array_agg(s.stream ORDER BY s.stream), '{}'),
           coalesce(array_agg(s.version ORDER BY s.stream), '{}')
      INTO stream_names, stream_versions
      FROM unnest(wanted) AS w(stream)
      CROSS JOIN LATERAL (SELECT t.stream, t.version FROM streams t
                          WHERE t.stream = w.stream LIMIT 1 FOR UPDATE) s;
    IF n > 0 AND EXISTS (SELECT 1 FROM unnest(r_id) AS i(id)
                         CROSS JOIN LATERAL (SELECT 1 FROM records r
                                             WHERE r.id = i.id LIMIT 1) r) THEN
        outcome := 'duplicate';
        RETURN;
    END IF;
    IF EXISTS (SELECT 1 FROM unnest(wanted, expected) AS e(stream, version)
               LEFT JOIN unnest(stream_names, stream_versions) AS s(stream, version)
                      ON s.stream = e.stream
               WHERE coalesce(s.version, 0) <> e.version) THEN
        outcome := 'conflict';
        RETURN;
    END IF;
    PERFORM parcours_write_index(timers_removed, work_removed,
        i_stream, i_tenant, i_subject, i_pathway, i_pathway_version, i_status, i_closed,
        i_states, i_cycle, i_enrolled, i_updated, i_version,
        t_id, t_stream, t_tenant, t_subject, t_fire, t_hash_hi, t_hash_lo,
        w_id, w_kind, w_stream, w_tenant, w_subject, w_pathway, w_code, w_role, w_title,
        w_status, w_priority, w_due, w_opened, w_opened_by, w_escalated, w_closed,
        st_id, st_status, st_escalated, st_priority, st_closed,
        s_stream, s_version, s_codec, s_type_version, s_payload, t_due);
    last_position := 0;
    IF n > 0 THEN
        IF (base & 1048575) + n > 1048576 THEN
            RAISE EXCEPTION 'parcours: this transaction has no room for % more records (at most 1048576 per transaction)', n
                USING ERRCODE = '54000';
        END IF;
        INSERT INTO records (position, stream, version, id, record_type, type_version,
            codec, tenant, subject, occurred_at, recorded_at, cause, payload)
        SELECT base + u.o, u.stream, u.version, u.id, u.record_type, u.type_version,
            u.codec, u.tenant, u.subject, u.occurred_at, r_recorded, u.cause, u.payload
        FROM unnest(r_offset, r_stream, r_version, r_id, r_type, r_type_version, r_codec,
            r_tenant, r_subject, r_occurred, r_cause, r_payload)
            AS u(o, stream, version, id, record_type, type_version, codec, tenant,
                 subject, occurred_at, cause, payload);
        INSERT INTO streams (stream, version)
        SELECT * FROM unnest(head_stream, head_version)
        ON CONFLICT (stream) DO UPDATE SET version = excluded.version;
        last_position := base + n - 1;
    END IF;
    outcome := 'written';
END $$;

