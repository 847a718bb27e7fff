-- Projections kept in the same transaction as the records they derive from
-- (see parcours-store's IndexChanges). Instants the runtime sorts or compares are stored
-- as integer nanoseconds since the Unix epoch (UTC).

-- One row per instance: what `GET /instances/...`, routing and metrics read.
CREATE TABLE instances (
    stream          TEXT    PRIMARY KEY,
    tenant          TEXT    NOT NULL,
    subject         TEXT    NOT NULL,
    pathway_id      TEXT    NOT NULL,
    pathway_version INTEGER NOT NULL,
    status          TEXT    NOT NULL,
    closed_reason   TEXT,
    states          TEXT    NOT NULL,
    cycle           INTEGER NOT NULL,
    enrolled_at     INTEGER NOT NULL,
    updated_at      INTEGER NOT NULL,
    version         INTEGER NOT NULL
);
CREATE INDEX instances_patient ON instances (tenant, subject);
CREATE INDEX instances_pathway ON instances (tenant, pathway_id, status);

-- Pending durable timers: a row each, found by due time. A million cost a few hundred
-- MB of disk and nothing in memory.
CREATE TABLE timers (
    id      TEXT    PRIMARY KEY,
    stream  TEXT    NOT NULL,
    tenant  TEXT    NOT NULL,
    subject TEXT    NOT NULL,
    fire_at INTEGER NOT NULL
);
CREATE INDEX timers_due ON timers (fire_at, id);

-- Open tasks, alerts and handoffs: the care teams' worklists.
CREATE TABLE work_items (
    id         TEXT    PRIMARY KEY,
    kind       TEXT    NOT NULL,
    stream     TEXT    NOT NULL,
    tenant     TEXT    NOT NULL,
    subject    TEXT    NOT NULL,
    pathway_id TEXT    NOT NULL,
    code       TEXT    NOT NULL,
    role       TEXT    NOT NULL,
    title      TEXT    NOT NULL,
    status     TEXT    NOT NULL,
    priority   TEXT    NOT NULL,
    due_at     INTEGER,
    opened_at  INTEGER NOT NULL,
    opened_by  TEXT    NOT NULL
);
CREATE INDEX work_items_role ON work_items (tenant, role, status, due_at);
CREATE INDEX work_items_stream ON work_items (stream);

-- The latest snapshot of each instance.
CREATE TABLE snapshots (
    stream       TEXT    PRIMARY KEY,
    version      INTEGER NOT NULL,
    codec        INTEGER NOT NULL,
    type_version INTEGER NOT NULL,
    payload      BLOB    NOT NULL
);

-- What could not be processed, with the reason (kept, never dropped).
CREATE TABLE dead_letters (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    received_at TEXT    NOT NULL,
    source      TEXT    NOT NULL,
    tenant      TEXT,
    reason      TEXT    NOT NULL,
    payload     BLOB    NOT NULL
);
