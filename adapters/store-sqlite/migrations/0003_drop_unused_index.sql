-- Patients are found through the `instances` projection; this index on every record
-- only slowed appends down.
DROP INDEX IF EXISTS records_tenant_subject;
