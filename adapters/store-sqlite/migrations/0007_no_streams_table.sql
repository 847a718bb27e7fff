-- A stream's version is the version of its last record: the `(stream, version)` unique
-- index of `records` answers it (`max(version)`, one index descent). The `streams` table
-- repeated it and cost two upserts per event (a table page and the page of its key
-- index, at random places) in every commit. Records keep every version, so nothing is
-- lost by dropping it: logs written with it read the same versions from their records.
DROP TABLE streams;
