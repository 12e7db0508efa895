-- Retention: published outbox rows and processed-message records are deleted in batches
-- by age; these indexes let each batch find its rows without scanning the table.
CREATE INDEX outbox_published_at ON outbox (published_at) WHERE published_at IS NOT NULL;
CREATE INDEX processed_messages_processed_at ON processed_messages (processed_at);
