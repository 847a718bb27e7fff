-- Each timer keeps the two 32-bit halves of its patient's partition hash
-- (`parcours_store::subject_hash`), so an engine owning some partitions finds their
-- timers with a query whatever the partition count. Rows of earlier layouts have none:
-- the engine rebuilds the projections from the log once (mark `projections-v2`).
ALTER TABLE timers ADD COLUMN hash_hi INTEGER;
ALTER TABLE timers ADD COLUMN hash_lo INTEGER;
