-- no-transaction
-- Retention deletes published outbox rows by commit time, oldest first.
CREATE INDEX CONCURRENTLY IF NOT EXISTS outbox_created_at ON outbox (created_at);
