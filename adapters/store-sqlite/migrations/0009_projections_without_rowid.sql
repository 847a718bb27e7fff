-- The projections keyed by a text id become WITHOUT ROWID tables: one B-tree ordered by
-- the id instead of a rowid table plus the index of its text primary key. Every commit
-- writes instance rows and timer rows at ids spread over the whole key space; each
-- B-tree page such a write touches is written whole to the WAL, so one tree less is a
-- page less per row written (and per timer removed). Same columns, same secondary
-- indexes, rows copied as they are.

CREATE TABLE instances_v9 (
    stream          TEXT    NOT NULL PRIMARY KEY,
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
) WITHOUT ROWID;
INSERT INTO instances_v9 (stream, tenant, subject, pathway_id, pathway_version, status,
                          closed_reason, states, cycle, enrolled_at, updated_at, version)
    SELECT stream, tenant, subject, pathway_id, pathway_version, status,
           closed_reason, states, cycle, enrolled_at, updated_at, version
    FROM instances;
DROP TABLE instances;
ALTER TABLE instances_v9 RENAME TO instances;
CREATE INDEX instances_patient ON instances (tenant, subject);
CREATE INDEX instances_pathway ON instances (tenant, pathway_id, status);

CREATE TABLE timers_v9 (
    id      TEXT    NOT NULL PRIMARY KEY,
    stream  TEXT    NOT NULL,
    tenant  TEXT    NOT NULL,
    subject TEXT    NOT NULL,
    fire_at INTEGER NOT NULL,
    hash_hi INTEGER,
    hash_lo INTEGER
) WITHOUT ROWID;
INSERT INTO timers_v9 (id, stream, tenant, subject, fire_at, hash_hi, hash_lo)
    SELECT id, stream, tenant, subject, fire_at, hash_hi, hash_lo FROM timers;
DROP TABLE timers;
ALTER TABLE timers_v9 RENAME TO timers;
CREATE INDEX timers_due ON timers (fire_at, id);

CREATE TABLE work_items_v9 (
    id         TEXT    NOT NULL PRIMARY KEY,
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
) WITHOUT ROWID;
INSERT INTO work_items_v9 (id, kind, stream, tenant, subject, pathway_id, code, role, title,
                           status, priority, due_at, opened_at, opened_by)
    SELECT id, kind, stream, tenant, subject, pathway_id, code, role, title,
           status, priority, due_at, opened_at, opened_by
    FROM work_items;
DROP TABLE work_items;
ALTER TABLE work_items_v9 RENAME TO work_items;
CREATE INDEX work_items_role ON work_items (tenant, role, status, due_at);
CREATE INDEX work_items_stream ON work_items (stream);
