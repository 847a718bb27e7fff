-- Generic plans for a commit's statements: parcours_commit() and parcours_write_index()
-- plan their statements once per connection instead of at every call.
--
-- PL/pgSQL caches each statement's plan per connection, but under the default
-- plan_cache_mode it makes a custom plan at every call while a custom plan looks cheaper
-- than the generic one, which it does for the short arrays of a commit: about 0.1 ms of
-- planning a commit (pgbench, one record: 0.68 ms of the server's CPU a commit against
-- 0.60 with generic plans; an empty call 0.29 against 0.17 ms). `SET plan_cache_mode =
-- force_generic_plan` on the two functions (in effect while they run, the functions they
-- call included) keeps the plan made at the first call.
--
-- A generic plan is kept until its tables' statistics change, and one made at a new
-- database's first commits sees empty tables, where a sequential scan costs nothing:
-- with generic plans alone, the projections' `DELETE … WHERE id = ANY(…)` scanned
-- `timers` and `work_items` whole at every commit until autovacuum's first ANALYZE
-- (PostgreSQL's CPU 73 % → 100 % of a core, the write's mean 2 → 7 ms, at 2 000 events/s
-- in the end-to-end benchmark). Every statement of a commit reaches its rows by a key,
-- so `enable_seqscan = off` on the two functions makes that the plan whatever the
-- statistics (a one-row table such as log_meta, with no index to use, is still read
-- whole). And `jit = off`: a disabled scan's cost (10^10) is above `jit_above_cost`, and
-- a one-row read compiled at every call took 20–200 ms. The work items' status update was a join that hashed the new statuses and
-- scanned `work_items`; it is now one primary-key update per item (a commit closes a
-- task or two). The adapter's tests check the plans (`tests/postgres.rs`).

CREATE OR REPLACE FUNCTION parcours_write_index(
    timers_removed text[], work_removed text[],
    i_stream text[], i_tenant text[], i_subject text[], i_pathway text[],
    i_pathway_version bigint[], i_status text[], i_closed text[], i_states text[],
    i_cycle bigint[], i_enrolled bigint[], i_updated bigint[], i_version bigint[],
    t_id text[], t_stream text[], t_tenant text[], t_subject text[], t_fire bigint[],
    t_hash_hi bigint[], t_hash_lo bigint[],
    w_id text[], w_kind text[], w_stream text[], w_tenant text[], w_subject text[],
    w_pathway text[], w_code text[], w_role text[], w_title text[], w_status text[],
    w_priority text[], w_due bigint[], w_opened bigint[], w_opened_by text[],
    st_id text[], st_status text[],
    s_stream text[], s_version bigint[], s_codec smallint[], s_type_version integer[],
    s_payload bytea[])
RETURNS void LANGUAGE plpgsql VOLATILE AS $$
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
        INSERT INTO timers (id, stream, tenant, subject, fire_at, hash_hi, hash_lo)
        SELECT * FROM unnest(t_id, t_stream, t_tenant, t_subject, t_fire, t_hash_hi,
            t_hash_lo)
        ON CONFLICT (id) DO UPDATE SET stream = excluded.stream,
            tenant = excluded.tenant, subject = excluded.subject,
            fire_at = excluded.fire_at, hash_hi = excluded.hash_hi,
            hash_lo = excluded.hash_lo;
    END IF;
    IF cardinality(w_id) > 0 THEN
        INSERT INTO work_items (id, kind, stream, tenant, subject, pathway_id, code,
            role, title, status, priority, due_at, opened_at, opened_by)
        SELECT * FROM unnest(w_id, w_kind, w_stream, w_tenant, w_subject, w_pathway,
            w_code, w_role, w_title, w_status, w_priority, w_due, w_opened, w_opened_by)
        ON CONFLICT (id) DO UPDATE SET kind = excluded.kind, stream = excluded.stream,
            tenant = excluded.tenant, subject = excluded.subject,
            pathway_id = excluded.pathway_id, code = excluded.code,
            role = excluded.role, title = excluded.title, status = excluded.status,
            priority = excluded.priority, due_at = excluded.due_at,
            opened_at = excluded.opened_at, opened_by = excluded.opened_by;
    END IF;
    IF cardinality(st_id) > 0 THEN
        FOR i IN 1 .. cardinality(st_id) LOOP
            UPDATE work_items SET status = st_status[i] WHERE id = st_id[i];
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

ALTER FUNCTION parcours_write_index
    SET plan_cache_mode = force_generic_plan SET enable_seqscan = off SET jit = off;
ALTER FUNCTION parcours_commit
    SET plan_cache_mode = force_generic_plan SET enable_seqscan = off SET jit = off;
