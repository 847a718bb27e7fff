-- A closed task, alert or handoff says when it closed: `closed_at`, the clinical time of
-- the record that closed it (integer nanoseconds, as `opened_at` and `due_at`); NULL
-- while it is open. Rows closed before stay NULL until the engine's next start rebuilds
-- the projections from the log (its mark `projections-v6`).
ALTER TABLE work_items ADD COLUMN closed_at INTEGER;
