-- The event log: inbound events and instance events, one row each.
-- `position` is the global order. SQLite has one writer at a time (every append runs in
-- BEGIN IMMEDIATE), so position order is commit order: readers never skip a row.
CREATE TABLE records (
    position     INTEGER PRIMARY KEY AUTOINCREMENT,
    stream       TEXT    NOT NULL,
    version      INTEGER NOT NULL,
    id           TEXT    NOT NULL UNIQUE,
    record_type  TEXT    NOT NULL,
    type_version INTEGER NOT NULL,
    codec        INTEGER NOT NULL,
    tenant       TEXT    NOT NULL,
    subject      TEXT    NOT NULL,
    occurred_at  TEXT    NOT NULL,
    recorded_at  TEXT    NOT NULL,
    cause        TEXT,
    payload      BLOB    NOT NULL,
    UNIQUE (stream, version)
);

CREATE INDEX records_tenant_subject ON records (tenant, subject);

-- The current version of every stream (optimistic concurrency).
CREATE TABLE streams (
    stream  TEXT    PRIMARY KEY,
    version INTEGER NOT NULL
);

-- Named readers' positions (the outbox relay, projections).
CREATE TABLE checkpoints (
    name     TEXT    PRIMARY KEY,
    position INTEGER NOT NULL
);
