-- Per-patient data keys, wrapped by a tenant key the database never holds
-- (`parcours-vault`). Erasing a patient deletes their row: what was encrypted with the
-- key (identifying fields, dead letters) can no longer be read. The store then rewrites
-- this table and `dead_letters` (VACUUM FULL), so no dead tuple keeps the bytes.
CREATE TABLE patient_keys (
    tenant     text  COLLATE "C" NOT NULL,
    subject    text  COLLATE "C" NOT NULL,
    key_id     text  NOT NULL,
    wrapped    bytea NOT NULL,
    PRIMARY KEY (tenant, subject)
);
