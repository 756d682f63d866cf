-- A schedule's lifecycle moves (sent, accepted, executing, completed) rewrite its row a few
-- times. With `state` indexed, every move also inserted into each of the table's five indexes
-- (seven WAL records per move, measured at 10,000 devices). The lifecycle queries that filter on
-- state also name a device or a schedule id, which have their own indexes; a listing by state
-- alone is ordered by creation time and walks that index. Without the state index, and with room
-- left in each page, a move is a heap-only (HOT) update: a new tuple version in the same page and
-- no index entries.
DROP INDEX IF EXISTS schedules_state;
ALTER TABLE schedules SET (fillfactor = 70);
