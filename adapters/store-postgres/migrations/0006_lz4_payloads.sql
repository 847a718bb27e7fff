-- Payloads above TOAST's threshold (~2 KB) are compressed: an enrolment's decision is
-- 3–10 KB of JSON. With the default method (pglz) the compression was ~11 % of the
-- server's CPU during a burst of enrolments; lz4 compresses such JSON about as well,
-- several times faster. This applies to values written from now on; older values keep
-- pglz and stay readable (each value records its method). A server built without lz4
-- keeps pglz.
DO $$
BEGIN
    ALTER TABLE records ALTER COLUMN payload SET COMPRESSION lz4;
    ALTER TABLE snapshots ALTER COLUMN payload SET COMPRESSION lz4;
EXCEPTION WHEN feature_not_supported THEN
    RAISE NOTICE 'lz4 is not available on this server: payloads stay compressed with pglz';
END
$$;
