-- no-transaction
-- The $all read order. Built CONCURRENTLY, so a large existing event table keeps taking writes.
CREATE INDEX CONCURRENTLY IF NOT EXISTS events_transaction_position ON events (transaction_id, global_position);
