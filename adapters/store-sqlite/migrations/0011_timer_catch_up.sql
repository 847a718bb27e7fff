-- A timer already due when the commit that wrote its row was recorded (a backdated
-- event's deadline) fires no sooner than that commit's recorded_at + the engine's
-- catch-up grace (`parcours serve --timer-catch-up`). `fire_at`, indexed (`timers_due`),
-- is when the row fires: its due instant, or the end of its grace; `due_at` keeps the
-- due instant (the clinical time of its `timer.fired`) when the grace made them differ,
-- NULL otherwise. Rows written before have none; the engine's next start rebuilds the
-- projections from the log anyway (its mark `projections-v7`).
ALTER TABLE timers ADD COLUMN due_at INTEGER;
