-- Per-patient data keys, wrapped by a tenant key the database never holds
-- (`parcours-vault`). Erasing a patient deletes their row: what was encrypted with the
-- key (identifying fields, dead letters) can no longer be read. The store turns on
-- `secure_delete` so a deleted row's bytes are overwritten, not left on a free page.
CREATE TABLE patient_keys (
    tenant     TEXT NOT NULL,
    subject    TEXT NOT NULL,
    key_id     TEXT NOT NULL,
    wrapped    BLOB NOT NULL,
    PRIMARY KEY (tenant, subject)
) WITHOUT ROWID;
