-- An outbox message the broker refused for good is marked with why, instead of being published;
-- retention keeps such rows, the only full copy of the message, for an operator.
ALTER TABLE outbox ADD COLUMN dead_letter_reason TEXT;
-- Retention deletes published outbox rows and processed-message records by age in batches: these
-- indexes find each batch without a scan.
CREATE INDEX outbox_published_at ON outbox (published_at) WHERE published_at IS NOT NULL AND dead_letter_reason IS NULL;
CREATE INDEX processed_messages_processed_at ON processed_messages (processed_at);
