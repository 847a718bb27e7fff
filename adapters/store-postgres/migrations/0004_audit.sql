-- The audit trail (`parcours_store::AuditLog`), apart from the domain log: who read or
-- changed what. Append-only: UPDATE, DELETE and TRUNCATE are refused, except the
-- deletes of `parcours_audit_purge(before)` (the retention purge), which opens the
-- table for its own transaction. For a guarantee against the application's own role,
-- grant it INSERT and SELECT on `audit` and EXECUTE on the purge function only, and
-- own the function with another role (SECURITY DEFINER).
CREATE TABLE audit (
    id       bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at_ns    bigint NOT NULL,   -- Unix time, nanoseconds (parcours_ts(at_ns) for people)
    actor    text NOT NULL,
    action   text NOT NULL,
    target   text,
    tenant   text,
    outcome  text NOT NULL CHECK (outcome IN ('allowed', 'denied', 'error')),
    detail   text
);
CREATE INDEX audit_tenant ON audit (tenant, id);
CREATE INDEX audit_at ON audit (at_ns);

CREATE FUNCTION parcours_audit_refuse() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' AND current_setting('parcours.audit_purge', true) = 'on' THEN
        RETURN OLD;
    END IF;
    RAISE EXCEPTION 'parcours: % on the audit trail refused: it is append-only', TG_OP
        USING ERRCODE = '55000';
END $$;
CREATE TRIGGER audit_append_only BEFORE UPDATE OR DELETE ON audit
    FOR EACH ROW EXECUTE FUNCTION parcours_audit_refuse();
CREATE TRIGGER audit_no_truncate BEFORE TRUNCATE ON audit
    FOR EACH STATEMENT EXECUTE FUNCTION parcours_audit_refuse();

-- The retention purge: entries older than `before_ns` leave; how many.
CREATE FUNCTION parcours_audit_purge(before_ns bigint) RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public AS $$
DECLARE
    removed bigint;
BEGIN
    PERFORM set_config('parcours.audit_purge', 'on', true);
    DELETE FROM audit WHERE at_ns < before_ns;
    GET DIAGNOSTICS removed = ROW_COUNT;
    PERFORM set_config('parcours.audit_purge', 'off', true);
    RETURN removed;
END $$;
