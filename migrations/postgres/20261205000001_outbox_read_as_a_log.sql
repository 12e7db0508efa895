-- The outbox is read like a log, as `$all` is: each row records the transaction that wrote it,
-- and one relay at a time (by lease) reads the rows of finished transactions in (transaction, id)
-- order from its checkpoint and moves the checkpoint once per batch. Rows carry no claims and
-- are never updated when published; retention deletes published rows (at or before the
-- checkpoint) by commit time. Rows written before this migration get transaction 0 and come
-- first. Adding a column with a constant default rewrites nothing.
ALTER TABLE outbox ADD COLUMN transaction_id xid8 NOT NULL DEFAULT '0';
ALTER TABLE outbox ALTER COLUMN transaction_id SET DEFAULT pg_current_xact_id();

-- The relay that holds the outbox, until when, and where it has published up to.
CREATE TABLE outbox_relay (
    name text PRIMARY KEY,
    owner text,
    lease_until timestamptz,
    transaction_id bigint NOT NULL,
    id bigint NOT NULL
);
-- Published up to the row before the first unpublished one (rows published out of order behind
-- it are published again: consumers drop duplicates by message id).
INSERT INTO outbox_relay (name, transaction_id, id)
SELECT 'outbox', 0, coalesce((SELECT min(id) - 1 FROM outbox WHERE published_at IS NULL AND dead_letter_reason IS NULL),
                             (SELECT max(id) FROM outbox), 0);

-- Claims and publish marks are gone, and with them their partial indexes.
ALTER TABLE outbox DROP COLUMN claimed_by, DROP COLUMN claimed_until, DROP COLUMN published_at;
