-- Projections kept in the same transaction as the records they derive from (see
-- parcours-store's IndexChanges). Derived data: `parcours replay` rebuilds them. Instants
-- are integer nanoseconds since the Unix epoch (UTC). Rows here are replaced and deleted
-- all day (timers fire, tasks close): autovacuum keeps them small, see the crate docs.

-- One row per instance: what `GET /instances/...`, routing and metrics read.
CREATE TABLE instances (
    stream          text   COLLATE "C" PRIMARY KEY,
    tenant          text   COLLATE "C" NOT NULL,
    subject         text   COLLATE "C" NOT NULL,
    pathway_id      text   COLLATE "C" NOT NULL,
    pathway_version bigint NOT NULL,
    status          text   COLLATE "C" NOT NULL,
    closed_reason   text   COLLATE "C",
    states          text   COLLATE "C" NOT NULL,
    cycle           bigint NOT NULL,
    enrolled_at     bigint NOT NULL,
    updated_at      bigint NOT NULL,
    version         bigint NOT NULL
);
CREATE INDEX instances_patient ON instances (tenant, subject, enrolled_at);
CREATE INDEX instances_pathway ON instances (tenant, pathway_id, status);

-- Pending durable timers, found by due time.
CREATE TABLE timers (
    id      text   COLLATE "C" PRIMARY KEY,
    stream  text   COLLATE "C" NOT NULL,
    tenant  text   COLLATE "C" NOT NULL,
    subject text   COLLATE "C" NOT NULL,
    fire_at bigint NOT NULL
) WITH (autovacuum_vacuum_scale_factor = 0.05);
CREATE INDEX timers_due ON timers (fire_at, id);

-- Open tasks, alerts and handoffs: the care teams' worklists.
CREATE TABLE work_items (
    id         text   COLLATE "C" PRIMARY KEY,
    kind       text   COLLATE "C" NOT NULL,
    stream     text   COLLATE "C" NOT NULL,
    tenant     text   COLLATE "C" NOT NULL,
    subject    text   COLLATE "C" NOT NULL,
    pathway_id text   COLLATE "C" NOT NULL,
    code       text   COLLATE "C" NOT NULL,
    role       text   COLLATE "C" NOT NULL,
    title      text   NOT NULL,
    status     text   COLLATE "C" NOT NULL,
    priority   text   COLLATE "C" NOT NULL,
    due_at     bigint,
    opened_at  bigint NOT NULL,
    opened_by  text   COLLATE "C" NOT NULL
) WITH (autovacuum_vacuum_scale_factor = 0.05);
CREATE INDEX work_items_role ON work_items (tenant, role, status, due_at);
CREATE INDEX work_items_stream ON work_items (stream);

-- The latest snapshot of each instance.
CREATE TABLE snapshots (
    stream       text     COLLATE "C" PRIMARY KEY,
    version      bigint   NOT NULL,
    codec        smallint NOT NULL,
    type_version integer  NOT NULL,
    payload      bytea    NOT NULL
);
