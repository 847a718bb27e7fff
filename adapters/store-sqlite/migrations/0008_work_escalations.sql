-- An escalated task, alert or handoff is on the worklist of the role its escalation told
-- as well as on that of the role it waits on (which keeps it): `escalated_to` is the
-- role the latest escalation told. Rows written before stay NULL until the engine's
-- next start rebuilds the projections (its mark `projections-v4`).
ALTER TABLE work_items ADD COLUMN escalated_to TEXT;
CREATE INDEX work_items_escalated ON work_items (tenant, escalated_to, status, due_at)
    WHERE escalated_to IS NOT NULL;
