-- A closed task, alert or handoff keeps its row with how it closed (`completed`,
-- `not_needed`, `could_not_be_done`, `acknowledged`, `accepted`, `declined`,
-- `withdrawn`): the care teams' apps list what was done as well as what waits. Rows
-- closed before were deleted; the engine's next start rebuilds the projections from the
-- log (its mark `projections-v5`), closed items included. The commit's functions are
-- unchanged: a closing is a status update (`st_status`).
--
-- Worklists of a tenant without a role, by status, paged by (due_at, id); the open items
-- stay a small part of a table that keeps every item ever opened.
CREATE INDEX work_items_status ON work_items (tenant, status, due_at, id);

-- Dead letters are read back per tenant, newest first.
CREATE INDEX dead_letters_tenant ON dead_letters (tenant, id);
