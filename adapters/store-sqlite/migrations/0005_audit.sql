-- The audit trail (`parcours_store::AuditLog`), apart from the domain log: who read or
-- changed what. Append-only: updates are refused, and so are deletes unless the
-- retention purge opened `audit_purge` in its own transaction (a guard against code
-- paths, not against someone holding the file; see the threat model).
CREATE TABLE audit (
    id       INTEGER PRIMARY KEY AUTOINCREMENT,
    at_ns    INTEGER NOT NULL,   -- Unix time, nanoseconds
    actor    TEXT NOT NULL,
    action   TEXT NOT NULL,
    target   TEXT,
    tenant   TEXT,
    outcome  TEXT NOT NULL CHECK (outcome IN ('allowed', 'denied', 'error')),
    detail   TEXT
);
CREATE INDEX audit_tenant ON audit (tenant, id);
CREATE INDEX audit_at ON audit (at_ns);

CREATE TABLE audit_purge (
    only_row INTEGER PRIMARY KEY CHECK (only_row = 1),
    open     INTEGER NOT NULL
);
INSERT INTO audit_purge (only_row, open) VALUES (1, 0);

CREATE TRIGGER audit_no_update BEFORE UPDATE ON audit
BEGIN
    SELECT RAISE(ABORT, 'the audit trail is append-only');
END;

CREATE TRIGGER audit_no_delete BEFORE DELETE ON audit
WHEN (SELECT open FROM audit_purge WHERE only_row = 1) = 0
BEGIN
    SELECT RAISE(ABORT, 'the audit trail is append-only (entries leave only by the retention purge)');
END;
