-- no-transaction
-- Retention deletes processed-message records past the dedup window in batches, oldest first.
CREATE INDEX CONCURRENTLY IF NOT EXISTS processed_messages_processed_at ON processed_messages (processed_at);
