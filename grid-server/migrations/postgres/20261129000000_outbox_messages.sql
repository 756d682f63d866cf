-- The messages of a device's delivery state, saved apart from the rest of it (grid-proto's
-- DetachedState stays in state_json, its TrackedMessages go here): an ack moves a delivery and
-- rewrites a few hundred bytes of state_json; the messages (kilobytes each) are written only when a
-- delivery is added or forgotten. NULL: a row saved before the split, whose state_json holds the
-- whole TrackerState (it is split at its next save).
ALTER TABLE outbox ADD COLUMN messages_json TEXT;
