-- The outbox is read like a log: one relay at a time (by lease) reads rows in id order from its
-- checkpoint (commits are serial here, so id order is commit order) and moves the checkpoint once
-- per batch. Rows are no longer claimed nor marked published; retention deletes published rows
-- (at or before the checkpoint) by commit time.
CREATE TABLE outbox_relay (
    name TEXT PRIMARY KEY,
    owner TEXT,
    lease_until INTEGER,
    id INTEGER NOT NULL
);
INSERT INTO outbox_relay (name, id)
SELECT 'outbox', coalesce((SELECT min(id) - 1 FROM outbox WHERE published_at IS NULL),
                          (SELECT max(id) FROM outbox), 0);
DROP INDEX outbox_unpublished;
DROP INDEX outbox_published_at;
CREATE INDEX outbox_created_at ON outbox (created_at);
