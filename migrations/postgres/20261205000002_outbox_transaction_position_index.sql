-- no-transaction
-- The relay's read order. Built CONCURRENTLY, so a large existing outbox keeps taking writes.
CREATE INDEX CONCURRENTLY IF NOT EXISTS outbox_transaction_position ON outbox (transaction_id, id);
