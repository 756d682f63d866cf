-- A device row is rewritten at every connect (status) and by the ack writers whenever an ack
-- changes its schedule in force: at the default fillfactor (100) every such update had to put the
-- new version on another page and add an entry to each of the three indexes. At 50 the update
-- stays on its page (heap-only) until the page must be pruned.
ALTER TABLE devices SET (fillfactor = 50);
