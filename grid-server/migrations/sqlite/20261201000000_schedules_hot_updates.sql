-- Kept in step with the PostgreSQL migration of the same name: the lifecycle queries find schedules
-- by device or id, and each lifecycle move no longer rewrites an index entry. (SQLite has no fillfactor.)
DROP INDEX IF EXISTS schedules_state;
