-- Storage for the publish path (measured at 10,000 devices, docs/benchmarks.md "Eighth session").
--
-- A schedule row (~500 bytes) is rewritten three or four times in quick succession (sent,
-- accepted or executing, completed). At fillfactor 70 a fresh page had room for the new versions
-- of about a third of its rows, so most send marks were not heap-only: a new tuple on another
-- page and an entry in each of the four indexes (4 WAL records per row). At 50 every row of a page
-- can be rewritten in place once before the page must be pruned: the send marks of 10,000
-- schedules took 130 ms of PostgreSQL time instead of 280 ms.
ALTER TABLE schedules SET (fillfactor = 50);
-- A delivery state's messages (a ~2.5 KB schedule each) are compressed on every new delivery
-- and read back on every ack: LZ4 instead of the default pglz (10,000 such inserts: 65 ms against
-- 190 ms; values ~30 % larger). Existing values keep their compression until rewritten. A server
-- built without LZ4 keeps pglz.
DO $$
BEGIN
    ALTER TABLE outbox ALTER COLUMN messages_json SET COMPRESSION lz4;
EXCEPTION WHEN feature_not_supported THEN
    RAISE NOTICE 'LZ4 is not available: outbox messages keep pglz';
END
$$;
